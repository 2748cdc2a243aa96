"""Does a model find people, or pasted cut-outs? Each coco128 person in their own photo against the same
person cut out along the COCO outline and pasted onto a held-out scene without people.

Training pastes people onto scenes (composites, crowd scenes) and shows untouched scenes as background, so
a network could learn the paste's edge instead of the person. The gap between the two IoUs measures that
shortcut: near 0 for a model that finds people by their look. On 2026-12-04 FC-DenseNet103 (epoch 61)
missed a man on a park bench in his own photo (IoU 0.00) and found him pasted onto another scene (0.85),
but lost others there (0.60 to 0.00): over all 61 photos pasting moved it by +0.023 and the shipped
weights by +0.030, both intervals across 0 (docs/experiments.md, "Pasted objects").

Example (about 8 minutes a model on 2 cores shared with a training):
    python -m train.pasted --model default --model /tmp/c103/weights
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .candidate import paired_interval, scenes_without_people
from .data import PASTE_FEATHER, outline_mask
from .evaluate import Predictor, build_predictor, oriented_rgb, select
from .metrics import person_iou
from .sources import data_root, object_outlines

FOUND = 0.5
"""IoU from which a person counts as found."""
MISSED = 0.2
"""IoU under which a person counts as missed."""


def pasted_copy(image: np.ndarray, mask: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """``image``'s people (0-255 ``mask``) feathered as training's crowd scenes feather them, over ``scene``
    scaled to cover the photo and cropped at its centre."""
    height, width = mask.shape
    backdrop = Image.fromarray(scene)
    scale = max(width / backdrop.width, height / backdrop.height)
    size = (max(width, round(backdrop.width * scale)), max(height, round(backdrop.height * scale)))
    backdrop = backdrop.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    background = np.asarray(backdrop, dtype=np.float32)[top : top + height, left : left + width]
    alpha = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(PASTE_FEATHER)), dtype=np.float32)[..., None] / 255.0
    return (image.astype(np.float32) * alpha + background * (1.0 - alpha)).round().astype(np.uint8)


def measure_paste_gap(predict: Predictor, root: Path) -> list[dict[str, object]]:
    """One row per coco128 photo with people: IoU in place and pasted (scenes taken in turn)."""
    scenes = [oriented_rgb(path) for path in scenes_without_people(root)]
    rows: list[dict[str, object]] = []
    for sample in select(root / "coco128", "all"):
        truth = np.asarray(Image.open(sample.mask).convert("L"))
        if not truth.any():
            continue
        image = oriented_rgb(sample.image)
        moved = pasted_copy(image, truth, scenes[len(rows) % len(scenes)])
        rows.append({
            "stem": sample.stem,
            "in_place": person_iou(predict(image), truth, 0.5),
            "pasted": person_iou(predict(moved), truth, 0.5),
        })
    return rows


def measure_object_paste(predict: Predictor, root: Path) -> list[dict[str, object]]:
    """One row per outlined object of the held-out scenes without people: the mean alpha over it in its own
    scene and pasted, the same way, onto the next scene. A model that has learned the paste marks pasted
    objects as people."""
    scenes = scenes_without_people(root)
    images = [oriented_rgb(path) for path in scenes]
    outlines = object_outlines(root / "coco128")
    rows: list[dict[str, object]] = []
    for number, (path, image) in enumerate(zip(scenes, images)):
        objects = outlines.get(path.stem, [])
        if not objects:
            continue
        in_place = predict(image)
        other_scene = images[(number + 1) % len(images)]
        for polygons in objects:
            mask = outline_mask(polygons, image.shape[1], image.shape[0])
            inside = mask > 127
            pasted = predict(pasted_copy(image, mask, other_scene))
            rows.append({"stem": path.stem, "in_place": float(in_place[inside].mean()), "pasted": float(pasted[inside].mean())})
    return rows


def object_line(name: str, rows: Sequence[dict[str, object]]) -> str:
    in_place = np.array([float(r["in_place"]) for r in rows])  # type: ignore[arg-type]
    pasted = np.array([float(r["pasted"]) for r in rows])  # type: ignore[arg-type]
    return (
        f"| {name} | {len(rows)} | {in_place.mean():.3f} ({(in_place > 0.25).mean():.0%} above 0.25) "
        f"| {pasted.mean():.3f} ({(pasted > 0.25).mean():.0%} above 0.25) |"
    )


def summary_line(name: str, rows: Sequence[dict[str, object]]) -> str:
    in_place = {str(r["stem"]): float(r["in_place"]) for r in rows}  # type: ignore[arg-type]
    pasted = {str(r["stem"]): float(r["pasted"]) for r in rows}  # type: ignore[arg-type]
    gap, low, high = paired_interval(pasted, in_place)
    only_pasted = sum(in_place[s] < MISSED and pasted[s] >= FOUND for s in in_place)
    return (
        f"| {name} | {np.mean(list(in_place.values())):.3f} | {np.mean(list(pasted.values())):.3f} "
        f"| {gap:+.3f} ({low:+.3f} to {high:+.3f}) | {only_pasted} of {len(rows)} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="default, a weights folder or Hub id, or a peer's name (repeatable)")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, help="write <out>/pasted_<n>.csv per model: stem, IoU in place, pasted")
    parser.add_argument("--objects-only", action="store_true",
                        help="only the 85 objects of the held-out scenes without people, not the 61 photos with people")
    args = parser.parse_args(argv)
    root = args.data_root or data_root()
    header = (
        "| model | coco128 people, in place | pasted onto a scene | gap, per photo (95% interval) "
        f"| found only pasted (IoU < {MISSED} in place, >= {FOUND} pasted) |"
    )
    people = [header, "|---|---|---|---|---|"]
    objects = [
        "| model | objects of the held-out scenes | mean alpha over them in place | pasted onto another scene |",
        "|---|---|---|---|",
    ]
    for number, name in enumerate(args.model):
        predict = build_predictor(name)
        objects.append(object_line(name, measure_object_paste(predict, root)))
        if args.objects_only:
            continue
        rows = measure_paste_gap(predict, root)
        people.append(summary_line(name, rows))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            with open(args.out / f"pasted_{number}.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=["stem", "in_place", "pasted"])
                writer.writeheader()
                writer.writerows(rows)
    print("\n".join(objects if args.objects_only else people + [""] + objects))


if __name__ == "__main__":
    main()
