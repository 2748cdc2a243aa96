"""Time each edge-refinement mode on one photo: what it adds on top of the network's forward pass.

Run: python benchmarks/refine.py [--size 1024x768] [--repeats 30] [--threads 2]
Prints, per mode (none, guided, matting when pymatting is installed), the median and p95 milliseconds
of turning the network's working-resolution map into the full-resolution alpha, and of the opt-in colour
decontamination (the forward pass itself, the same for every mode, is printed once).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bgremove_plugin import BackgroundRemover
from bgremove_plugin.refine import estimate_foreground, guided_upsample
from bgremove_plugin.transforms import prepare_batch, probability_to_mask

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"


def _timed(function, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    function()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1024x768", help="photo size WxH (the sample portrait, resized)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    photo = Image.open(PHOTO).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    remover = BackgroundRemover(device="cpu")
    net = remover.model
    batch, valid = prepare_batch(
        [photo], long_side=net.input_size, multiple=net.pad_multiple, mean=net.mean, std=net.std
    )
    with torch.inference_mode():
        forward = _timed(lambda: remover._person_probability(batch), args.repeats)
        probability = net.probability_to_alpha(remover._person_probability(batch)[0])
    low = probability[: valid[0][1], : valid[0][0]].numpy()
    guided_alpha = guided_upsample(low, photo)
    modes = {
        "none (bilinear)": lambda: probability_to_mask(probability, valid[0], photo.size),
        "guided": lambda: guided_upsample(low, photo),
    }
    if importlib.util.find_spec("pymatting") is not None:
        from bgremove_plugin.matting import matte

        modes["matting"] = lambda: matte(low, photo)
    modes["decontaminate (after guided)"] = lambda: estimate_foreground(photo, guided_alpha)
    report = {
        "photo": f"{width}x{height}",
        "threads": torch.get_num_threads(),
        "forward_ms_median": round(statistics.median(forward), 1),
    }
    for name, function in modes.items():
        samples = _timed(function, args.repeats)
        report[name] = {
            "median_ms": round(statistics.median(samples), 1),
            "p95_ms": round(float(np.percentile(samples, 95)), 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
