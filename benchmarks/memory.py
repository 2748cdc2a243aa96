"""Peak memory of one cut-out of a very large photo (the network runs at its working resolution).

Run: python benchmarks/memory.py --megapixels 40
Prints the process's peak RSS before and after the call; each size runs in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import resource, sys, time
import numpy as np
from PIL import Image
from bgremove_plugin import BackgroundRemover
width, height = int(sys.argv[1]), int(sys.argv[2])
remover = BackgroundRemover(device="cpu")
rng = np.random.default_rng(0)
tile = rng.integers(0, 255, size=(256, 256, 3), dtype=np.uint8)
image = Image.fromarray(np.tile(tile, (height // 256 + 1, width // 256 + 1, 1))[:height, :width])
remover(Image.new("RGB", (64, 64)))  # load and warm up before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
out = remover(image)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{before:.0f} {after:.0f} {seconds:.2f} {out.size[0]}x{out.size[1]}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1, 12, 40])
    args = parser.parse_args()
    for megapixels in args.megapixels:
        width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
        height = int(width * 3 / 4)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(width), str(height)], capture_output=True, text=True, check=True
        )
        before, after, seconds, size = out.stdout.split()
        input_mb = width * height * 3 / 2**20
        print(
            json.dumps(
                {
                    "megapixels": round(width * height / 1e6, 1),
                    "size": size,
                    "rgb_input_mb": round(input_mb),
                    "peak_rss_mb_before_call": float(before),
                    "peak_rss_mb_after_call": float(after),
                    "added_peak_mb": round(float(after) - float(before)),
                    "added_per_input_mb": round((float(after) - float(before)) / input_mb, 2),
                    "seconds": float(seconds),
                }
            )
        )


if __name__ == "__main__":
    main()
