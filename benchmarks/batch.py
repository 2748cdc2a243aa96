"""Photos per second for a folder: the local CLI against ``--engine ray`` on the same photos.

Run: python benchmarks/batch.py [--photos 24] [--size 1024x768] [--concurrency 2] [--num-cpus N]
It writes --photos copies of the sample photo (each slightly rotated, so none is cached) into a scratch
folder, cuts them out once with the local CLI and once on a local Ray (started here with --num-cpus, by
default all cores), and prints the time and photos per second of each. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from bgremove_plugin.cli import main as cli

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    photo = Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB").resize((width, height))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "photos"
        folder.mkdir()
        for i in range(args.photos):
            photo.rotate(i * 0.5).save(folder / f"{i:04d}.jpg", quality=90)
        print(f"| engine | photos | seconds | photos/s |  ({args.size}, {os.cpu_count()} cores)")
        print("|---|---|---|---|")
        started = time.perf_counter()
        cli([str(folder), "-o", str(Path(scratch) / "local"), "-q"])
        local = time.perf_counter() - started
        print(f"| local CLI | {args.photos} | {local:.1f} | {args.photos / local:.2f} |")

        import ray

        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter()
        cli([str(folder), "-o", str(Path(scratch) / "ray"), "--engine", "ray", "--concurrency", str(args.concurrency)])
        on_ray = time.perf_counter() - started
        ray.shutdown()
        print(f"| ray, {args.concurrency} actors (start-up included) | {args.photos} | {on_ray:.1f} | {args.photos / on_ray:.2f} |")


if __name__ == "__main__":
    main()
