"""Latency and throughput of a cut-out, ours beside the peers, all in one process on the same photo.

Run with our package only:           python benchmarks/speed.py
With the peers (their environment):  .peers/venv/bin/python benchmarks/speed.py --peers

End to end per photo, decode excluded: preprocessing, inference, upsampling/refinement and compositing
to an RGBA cut-out. Prints median and p95 ms per photo, images/s for batches (ours), the peak RSS growth
of each model measured in a fresh child process, and each model's median as a ratio to ours.
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


def load_photo(size: str) -> Image.Image:
    width, height = (int(v) for v in size.lower().split("x"))
    return Image.open(PHOTO).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def cutter(name: str) -> Callable[[Image.Image], Image.Image]:
    """A photo -> RGBA cut-out function: ours (``default``, ``default-none``) or a peer."""
    if name.startswith("default"):
        from bgremove_plugin import BackgroundRemover

        refine = "none" if name == "default-none" else "guided"
        remover = BackgroundRemover(device="cpu", refine=refine)  # type: ignore[arg-type]
        return lambda photo: remover.remove(photo, decontaminate=refine == "guided")
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


def batch_throughput(photo: Image.Image, batch_size: int, count: int = 8) -> float:
    from bgremove_plugin import BackgroundRemover

    remover = BackgroundRemover(device="cpu", batch_size=batch_size)
    photos = [photo] * count
    remover.remove_many(photos[:batch_size])
    start = time.perf_counter()
    remover.remove_many(photos)
    return count / (time.perf_counter() - start)


def peak_rss_growth(name: str, size: str) -> float:
    """MB the process's peak RSS grows by when ``name`` loads and cuts out one photo (a fresh child)."""
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[1]); from benchmarks.speed import cutter, load_photo;"
        "photo = load_photo(sys.argv[3]); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "cutter(sys.argv[2])(photo); print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)"
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
    args = parser.parse_args()
    import torch

    photo = load_photo(args.size)
    names = ["default", "default-none", *(PEERS if args.peers else ())]
    rows = {}
    for name in names:
        samples = latency(cutter(name), photo, args.repeats)
        rows[name] = {
            "median_ms": round(statistics.median(samples), 1),
            "p95_ms": round(float(np.percentile(samples, 95)), 1),
        }
    ours = rows["default"]["median_ms"]
    for name, row in rows.items():
        row["ratio_to_ours"] = round(row["median_ms"] / ours, 2)
        if not args.no_memory:
            row["peak_rss_growth_mb"] = round(peak_rss_growth(name, args.size), 1)
    report = {
        "photo": args.size,
        "torch_threads": torch.get_num_threads(),
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "models": rows,
        "ours_batch_images_per_s": {f"batch {b}": round(batch_throughput(photo, b), 2) for b in (1, 4, 8)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
