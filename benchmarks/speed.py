"""Latency and throughput of a cut-out, ours beside the peers, all in one process on the same photo.

Run with our package only:           python benchmarks/speed.py
With the peers (their environment):  .peers/venv/bin/python benchmarks/speed.py --peers
Beside other weights (a candidate):  python benchmarks/speed.py --weights /tmp/candidate/weights

End to end per photo, decode excluded: preprocessing, inference, upsampling/refinement and compositing
to an RGBA cut-out. Ours runs as the defaults choose on this machine (``ours``: backend and precision
"auto", guided edges), then each backend and precision by name, with plain bilinear edges, and with
colour decontamination added (opt-in). Prints median and p95 ms per photo, the time per stage of
PyTorch float32 (the default before bfloat16) and of the default, images/s for batches, the peak RSS
growth of each model measured in a fresh child process, and each model's median as a ratio to U²-Net's
(to ``ours`` without --peers). Pause anything else running on the machine first.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "astronaut.jpg"
PEERS = ("u2net", "u2netp", "mediapipe0")
OURS = {
    # name: (backend, precision, refine, decontaminate); the first is the package's default
    "ours": ("auto", "auto", "guided", False),
    "ours-torch-bfloat16": ("torch", "bfloat16", "guided", False),
    "ours-torch-float32": ("torch", "float32", "guided", False),
    "ours-onnx-float32": ("onnx", "float32", "guided", False),
    "ours-plain-edges": ("auto", "auto", "none", False),
    "ours-decontaminate": ("auto", "auto", "guided", True),
}


def load_photo(size: str) -> Image.Image:
    width, height = (int(v) for v in size.lower().split("x"))
    return Image.open(PHOTO).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


WEIGHTS_PREFIX = "weights:"
"""A model name of the form ``weights:FOLDER`` is our default cut-out with the weights in FOLDER."""


def cutter(name: str) -> Callable[[Image.Image], Image.Image]:
    """A photo -> RGBA cut-out function: ours (a key of ``OURS``), other weights, or a peer."""
    if name in OURS or name.startswith(WEIGHTS_PREFIX):
        from bgremove_plugin import BackgroundRemover

        backend, precision, refine, decontaminate = OURS.get(name, OURS["ours"])
        weights = Path(name.removeprefix(WEIGHTS_PREFIX)) if name.startswith(WEIGHTS_PREFIX) else None
        remover = BackgroundRemover(
            weights, device="cpu", refine=refine, backend=backend, precision=precision  # type: ignore[arg-type]
        )
        return lambda photo: remover.remove(photo, decontaminate=decontaminate)
    sys.path.insert(0, str(REPO))
    from train.peers import build_peer

    peer = build_peer(name)

    def cut(photo: Image.Image) -> Image.Image:
        alpha = Image.fromarray(np.round(peer(np.asarray(photo)) * 255).astype(np.uint8))
        cutout = photo.copy()
        cutout.putalpha(alpha)
        return cutout

    return cut


def latency(function: Callable[[Image.Image], Image.Image], photo: Image.Image, repeats: int) -> list[float]:
    function(photo)  # warm-up: first-call allocations and lazy initialisation
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(photo)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def stage_times(photo: Image.Image, repeats: int, *, backend: str, precision: str) -> dict[str, float]:
    """Median ms of each stage of a cut-out (guided edges, with the opt-in decontamination)."""
    import torch

    from bgremove_plugin import BackgroundRemover
    from bgremove_plugin.refine import estimate_foreground, guided_upsample
    from bgremove_plugin.transforms import prepare_batch

    remover = BackgroundRemover(device="cpu", backend=backend, precision=precision)  # type: ignore[arg-type]
    net = remover.model
    timings: dict[str, list[float]] = {}
    clock = time.perf_counter

    def lap(stage: str, since: float) -> float:
        now = clock()
        timings.setdefault(stage, []).append((now - since) * 1000)
        return now

    for _ in range(repeats + 1):
        start = clock()
        batch, valid = prepare_batch(
            [photo], long_side=net.input_size, multiple=net.pad_multiple, mean=net.mean, std=net.std
        )
        start = lap("preprocess", start)
        with torch.inference_mode():
            probability = remover._person_probability(batch)
        start = lap("inference", start)
        width, height = valid[0]
        alpha = guided_upsample(probability[0, :height, :width].numpy(), photo)
        start = lap("guided upsample", start)
        colours = estimate_foreground(photo, alpha)
        start = lap("decontaminate", start)
        colours.putalpha(alpha)
        lap("compose", start)
    return {stage: round(statistics.median(samples[1:]), 1) for stage, samples in timings.items()}


def batch_throughput(photo: Image.Image, batch_size: int, count: int = 8) -> float:
    from bgremove_plugin import BackgroundRemover

    remover = BackgroundRemover(device="cpu", batch_size=batch_size)
    photos = [photo] * count
    remover.remove_many(photos[:batch_size])
    start = time.perf_counter()
    remover.remove_many(photos)
    return count / (time.perf_counter() - start)


def high_water_mb() -> float:
    """This process's peak resident memory. /proc's VmHWM starts afresh at exec; ru_maxrss (the fallback
    off Linux) keeps the forking parent's peak, which made every child read 0 growth here."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_growth(name: str, size: str) -> float:
    """MB the process's peak RSS grows by when ``name`` loads and cuts out one photo (a fresh child)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from benchmarks.speed import cutter, high_water_mb, load_photo;"
        "photo = load_photo(sys.argv[3]); before = high_water_mb();"
        "cutter(sys.argv[2])(photo); print(high_water_mb() - before)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO), name, size], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1024x768", help="photo size WxH (the sample portrait, resized)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peers", action="store_true", help="also run U2-Net, U2-NetP and MediaPipe (peers' env)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-model child processes")
    parser.add_argument("--weights", type=Path, action="append", default=[],
                        help="also time the default cut-out with the weights in this folder (repeatable)")
    args = parser.parse_args()
    import torch

    from bgremove_plugin import BackgroundRemover

    default = BackgroundRemover(device="cpu")
    photo = load_photo(args.size)
    names = [*OURS, *(f"{WEIGHTS_PREFIX}{folder}" for folder in args.weights), *(PEERS if args.peers else ())]
    rows = {}
    for name in names:
        samples = latency(cutter(name), photo, args.repeats)
        rows[name] = {
            "median_ms": round(statistics.median(samples), 1),
            "p95_ms": round(float(np.percentile(samples, 95)), 1),
        }
    baseline = "u2net" if "u2net" in rows else "ours"
    for name, row in rows.items():
        row[f"ratio_to_{baseline}"] = round(row["median_ms"] / rows[baseline]["median_ms"], 2)
        if not args.no_memory:
            row["peak_rss_growth_mb"] = round(peak_rss_growth(name, args.size), 1)
    report = {
        "photo": args.size,
        "torch_threads": torch.get_num_threads(),
        "ours_is": {"backend": default.backend, "precision": default.precision},
        "process_peak_rss_mb": round(high_water_mb(), 1),
        "models": rows,
        "stages_ms": {
            "torch float32": stage_times(photo, args.repeats, backend="torch", precision="float32"),
            "ours": stage_times(photo, args.repeats, backend="auto", precision="auto"),
        },
        "ours_images_per_s": {f"batch {b}": round(batch_throughput(photo, b), 2) for b in (1, 4)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
