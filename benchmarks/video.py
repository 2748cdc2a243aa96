"""Video: frames per second, and how much the alpha flickers, per frame against temporally smoothed.

Run: python benchmarks/video.py [CLIP ...] [--frames 90] [--strip docs/video_strip.png]
Default clips: the webcam clips in ../shared/data/video/asl_gestures (640x480). For each clip and each
smoothing (0 = every frame on its own, and the package's default) it prints the frames per second of the
whole cut-out and the mean absolute change of alpha between consecutive frames, over all pixels and over
the pixels that did not move (where a steady outline should not change). With --strip it draws, for the
first clip, six consecutive frames' alpha per frame (top) and smoothed (bottom). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageFilter

from bgremove_plugin import BackgroundRemover
from bgremove_plugin.video import MOTION_LEVEL, TemporalSmoother

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIPS = sorted((REPO.parent / "shared" / "data" / "video" / "asl_gestures").glob("*.mkv"))


def alphas(clip: Path, remover: BackgroundRemover, smoothing: float, limit: int) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Alpha of each frame, the frames' blurred greys, and the frames per second of the cut-outs."""
    smoother = TemporalSmoother(smoothing)
    result, greys = [], []
    started = time.perf_counter()
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_image()
            result.append(smoother(rgb, remover.predict_alpha([rgb])[0]))
            greys.append(np.asarray(rgb.convert("L").filter(ImageFilter.BoxBlur(2)), dtype=np.float32))
            if len(result) >= limit:
                break
    return result, greys, len(result) / (time.perf_counter() - started)


def flicker(alpha: list[np.ndarray], greys: list[np.ndarray]) -> tuple[float, float]:
    changes = [np.abs(b - a) for a, b in pairwise(alpha)]
    still = [np.abs(g1 - g0) < MOTION_LEVEL for g0, g1 in pairwise(greys)]
    everywhere = float(np.mean([c.mean() for c in changes]))
    where_still = float(np.mean([c[s].mean() for c, s in zip(changes, still) if s.any()]))
    return everywhere, where_still


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="*", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--frames", type=int, default=90, help="at most this many frames per clip")
    parser.add_argument("--strip", type=Path, help="write a frame strip of the first clip here")
    args = parser.parse_args()
    remover = BackgroundRemover(device="cpu")
    print("| clip | smoothing | frames | frames/s | alpha change, all pixels | alpha change, still pixels |")
    print("|---|---|---|---|---|---|")
    strips = []
    for number, clip in enumerate(args.clips):
        for smoothing in (0.0, 0.5):
            alpha, greys, fps = alphas(clip, remover, smoothing, args.frames)
            everywhere, still = flicker(alpha, greys)
            print(f"| {clip.name} | {smoothing} | {len(alpha)} | {fps:.2f} | {everywhere:.4f} | {still:.4f} |")
            if number == 0 and args.strip:
                middle = len(alpha) // 2
                strips.append(np.concatenate([a[::2, ::2] for a in alpha[middle : middle + 6]], axis=1))
    if args.strip and strips:
        Image.fromarray((np.concatenate(strips, axis=0) * 255).round().astype(np.uint8)).save(args.strip)
        print(f"strip: {args.strip} (top: each frame alone; bottom: smoothed)")


if __name__ == "__main__":
    main()
