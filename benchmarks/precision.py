"""Accuracy and network time of each number format: PyTorch float32 and bfloat16, ONNX Runtime float32 and
ONNX Runtime's static int8 quantisation (QDQ, calibrated on training photos).

Run: python benchmarks/precision.py [--weights FOLDER] [--calibration 64] [--limit N]
Needs the [onnx] extra and the data (../shared/data or $BGREMOVE_DATA). For each variant it prints the mean
IoU (alpha cut at 0.5, full resolution, default guided edges) on the CCP test split and on the COCO
single-person test split, its difference from PyTorch float32 on the same photos, and the median ms of
the network alone on a 1024x768 photo (320x256 input). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bgremove_plugin import BackgroundRemover
from bgremove_plugin.onnx_backend import OnnxNet
from bgremove_plugin.transforms import prepare_batch
from train.evaluate import score, select
from train.sources import data_root

TEST_SETS = {"CCP test": ("ccp", "test"), "COCO single-person test": ("coco_people", "test")}
CALIBRATION_SOURCES = ("ccp", "coco_people")


def float32_graph(shipped: Path, out: Path) -> Path:
    """The shipped graph with its float16-stored weights made plain float32 initialisers: the quantiser
    only quantises weights that are initialisers, not the outputs of Cast nodes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(shipped))
    stored = {init.name: init for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        source = node.input[0] if node.op_type == "Cast" and len(node.input) == 1 else None
        if source in stored:
            model.graph.initializer.remove(stored[source])
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(stored[source]).astype(np.float32), node.output[0]))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return out


def calibration_batches(remover: BackgroundRemover, count: int) -> Iterator[dict[str, np.ndarray]]:
    """Normalised network inputs of ``count`` training photos per source, at the working resolution."""
    net = remover.model
    for source in CALIBRATION_SOURCES:
        samples = select(data_root() / source, "train")
        random.Random(0).shuffle(samples)
        for sample in samples[:count]:
            batch, _ = prepare_batch(
                [Image.open(sample.image).convert("RGB")], long_side=net.input_size, multiple=net.pad_multiple,
                mean=net.mean, std=net.std,
            )
            yield {"image": batch.numpy()}


def quantised_graph(remover: BackgroundRemover, shipped: Path, folder: Path, count: int) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = calibration_batches(remover, count)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = folder / "model.int8.onnx"
    quantize_static(
        str(float32_graph(shipped, folder / "model.float32.onnx")), str(out), Reader(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
    )
    return out


def network_ms(remover: BackgroundRemover, photo: Image.Image, repeats: int = 15) -> float:
    net = remover.model
    batch, _ = prepare_batch([photo], long_side=net.input_size, multiple=net.pad_multiple, mean=net.mean, std=net.std)
    with torch.inference_mode():
        remover._person_probability(batch)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            remover._person_probability(batch)
            samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO / "bgremove_plugin" / "weights")
    parser.add_argument("--calibration", type=int, default=64, help="training photos per source for int8 calibration")
    parser.add_argument("--limit", type=int, default=0, help="at most this many photos per test set (0: all)")
    args = parser.parse_args()
    photo = Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB").resize((1024, 768), Image.Resampling.LANCZOS)
    variants: dict[str, Callable[[], BackgroundRemover]] = {
        "torch float32": lambda: BackgroundRemover(args.weights, device="cpu", backend="torch", precision="float32"),
        "torch bfloat16": lambda: BackgroundRemover(args.weights, device="cpu", backend="torch", precision="bfloat16"),
        "onnx float32": lambda: BackgroundRemover(args.weights, device="cpu", backend="onnx"),
    }
    scratch = tempfile.TemporaryDirectory()

    def int8() -> BackgroundRemover:
        remover = BackgroundRemover(args.weights, device="cpu", backend="onnx")
        assert remover._onnx is not None
        remover._onnx = OnnxNet(quantised_graph(remover, remover._onnx.path, Path(scratch.name), args.calibration))
        return remover

    variants["onnx int8 (QDQ)"] = int8
    sets = {name: select(data_root() / source, split) for name, (source, split) in TEST_SETS.items()}
    if args.limit:
        sets = {name: samples[: args.limit] for name, samples in sets.items()}
    reference: dict[str, dict[str, float]] = {}
    print("| variant | network ms (1024x768) | " + " | ".join(f"{name} IoU (vs float32)" for name in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for variant, build in variants.items():
        remover = build()
        cells = []
        for name, samples in sets.items():
            rows = score(lambda path, r=remover: r.predict_alpha([path])[0], samples)
            ious = {str(row["stem"]): float(row["iou"]) for row in rows}  # type: ignore[arg-type]
            reference.setdefault(name, ious)
            mean = float(np.mean(list(ious.values())))
            change = mean - float(np.mean([reference[name][stem] for stem in ious]))
            cells.append(f"{mean:.4f} ({change:+.4f})")
        print(f"| {variant} | {network_ms(remover, photo):.0f} | " + " | ".join(cells) + " |", flush=True)
    scratch.cleanup()


if __name__ == "__main__":
    main()
