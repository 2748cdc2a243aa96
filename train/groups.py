"""Label photos of several people that have person boxes but no masks: the teacher, held to the boxes.

COCO's multi-person photos (``coco_people``) come with a box per person and no outline. The teacher
(``train.teacher``: the mean of U²-Net, U²-NetP and MediaPipe) draws outlines, but it also marks other
salient things (boards, animals) and misses small people. The boxes keep it honest:

- outside every person box (grown by ``BOX_GROWTH``) the label is background, whatever the teacher says,
  except where the teacher is sure of a person no box explains (a crowd COCO did not box, a person left
  unannotated): that is left out of the loss rather than taught as background;
- inside a box the label is the teacher's probability; the source's ``ignore_band`` leaves its unsure
  band out of the loss;
- a box the teacher does not fill (under ``MIN_FILL`` of it over 0.5: a small, hidden or cut-off person) is
  left out of the loss rather than taught as background, except for the confident pixels of a filled box it
  overlaps (in a group photo neighbouring boxes overlap, and one missed person would blank the others).

The teacher sees the whole photo once. Looking again at a crop around each small box found a fifth more
of the boxes on a dozen photos but took 4.5 times as long (3.5 s a photo on 2 cores), so small people
are left to the human-labelled photos and pasted crowds.

Runs in the peers' environment (``python -m train.peers setup``)::

    .peers/venv/bin/python -m train.groups ../shared/data/coco_people --out train/pseudo_labels/coco_people_groups

Writes ``masks/<stem>.png`` (8-bit probability x 255, the photo's size), ``unlabelled/masks/<stem>.png``
(255 = left out of the loss; only for photos that have such pixels) and ``provenance.json``. Photos that
already have a mask are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

log = logging.getLogger("train.groups")

Segmenter = Callable[[np.ndarray], np.ndarray]
"""RGB uint8 (H, W, 3) -> person probability (H, W) in [0, 1]."""

PixelBox = tuple[float, float, float, float]
"""(left, top, right, bottom) in pixels of the stored photo."""

BOX_GROWTH = 0.1
"""Share of a box's width and height added on each side (plus ``BOX_MARGIN`` pixels): COCO boxes are tight
and the teacher's soft edge reaches past them."""
BOX_MARGIN = 2
MIN_FILL = 0.2
"""A box with less than this share of its pixels over 0.5 is one the teacher did not find."""
UNEXPLAINED_GROWTH = 3
"""Pixels added around a confident person outside every box before it is left out of the loss."""


@dataclass(frozen=True)
class GroupLabel:
    mask: np.ndarray
    """uint8 probability x 255: the teacher's inside the boxes it filled, 0 elsewhere."""
    unlabelled: np.ndarray
    """uint8, 255 where the loss is to skip: boxes not filled, and confident people outside every box."""
    boxes_filled: int
    boxes_unfilled: int


def grow(box: PixelBox, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` grown by ``BOX_GROWTH`` and ``BOX_MARGIN`` and clipped to the photo, as whole-pixel bounds."""
    left, top, right, bottom = box
    dx = (right - left) * BOX_GROWTH + BOX_MARGIN
    dy = (bottom - top) * BOX_GROWTH + BOX_MARGIN
    return (
        max(0, int(np.floor(left - dx))), max(0, int(np.floor(top - dy))),
        min(width, int(np.ceil(right + dx))), min(height, int(np.ceil(bottom + dy))),
    )


def hold_to_boxes(probability: np.ndarray, boxes: Sequence[PixelBox]) -> GroupLabel:
    """The label and the left-out region of a photo from the teacher's ``probability`` and its person boxes."""
    height, width = probability.shape
    inside = np.zeros((height, width), dtype=bool)
    unfilled = np.zeros((height, width), dtype=bool)
    filled_count = 0
    for box in boxes:
        x0, y0, x1, y1 = grow(box, width, height)
        tight = probability[int(box[1]) : int(np.ceil(box[3])), int(box[0]) : int(np.ceil(box[2]))]
        if tight.size and float((tight > 0.5).mean()) >= MIN_FILL:
            inside[y0:y1, x0:x1] = True
            filled_count += 1
        else:
            unfilled[y0:y1, x0:x1] = True
    mask = np.where(inside, probability, 0.0)
    unexplained = (probability > 0.5) & ~inside & ~unfilled
    if unexplained.any():
        grown = Image.fromarray(unexplained.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * UNEXPLAINED_GROWTH + 1))
        unexplained = np.asarray(grown) > 127
    # Where an unfilled box overlaps a filled one, the teacher's confident pixels still belong to the person it
    # found; the rest of the overlap may be the person it missed, so it is neither person nor background.
    confident = probability > 0.5
    left_out = (unfilled & ~(inside & confident)) | (unexplained & ~inside)
    return GroupLabel(
        mask=np.round(np.where(left_out, 0.0, mask) * 255).astype(np.uint8),
        unlabelled=left_out.astype(np.uint8) * 255,
        boxes_filled=filled_count,
        boxes_unfilled=len(boxes) - filled_count,
    )


def person_boxes(annotation_file: Path) -> dict[str, tuple[int, list[PixelBox]]]:
    """Photo stem -> (licence id, person boxes in pixels) of the photos whose people have boxes only
    (``segmentation`` empty): COCO-format json read with ``json``, since pycocotools has nothing to draw."""
    data = json.loads(annotation_file.read_text())
    images = {image["id"]: image for image in data["images"]}
    outlined = {a["image_id"] for a in data["annotations"] if a.get("segmentation")}
    result: dict[str, tuple[int, list[PixelBox]]] = {}
    for annotation in data["annotations"]:
        if annotation["image_id"] in outlined or annotation.get("iscrowd", 0):
            continue
        image = images[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        stem = Path(image["file_name"]).stem
        result.setdefault(stem, (int(image.get("license", 0)), []))[1].append((x, y, x + w, y + h))
    return result


def label_groups(folder: Path, out: Path, segment: Segmenter, *, limit: int | None = None) -> dict[str, int]:
    """Write the labels of ``folder``'s box-only photos (the first ``limit`` by stem, or all) to ``out``;
    returns counts of photos written and of boxes filled and not."""
    annotation_file = next((folder / "annotations").glob("instances_*.json"))
    photos = sorted(person_boxes(annotation_file).items())[:limit]
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "unlabelled" / "masks").mkdir(parents=True, exist_ok=True)
    counts = {"photos": 0, "boxes_filled": 0, "boxes_unfilled": 0}
    started = time.monotonic()
    for done, (stem, (_, boxes)) in enumerate(photos, 1):
        if (out / "masks" / f"{stem}.png").exists():
            continue
        with Image.open(folder / "images" / f"{stem}.jpg") as image:
            # Training reads the stored pixels without EXIF orientation, so the label must match them.
            rgb = np.asarray(image.convert("RGB"))
        label = hold_to_boxes(segment(rgb), boxes)
        if label.unlabelled.any():
            Image.fromarray(label.unlabelled).save(out / "unlabelled" / "masks" / f"{stem}.png", optimize=True)
        # The mask last: its presence marks the photo as done.
        Image.fromarray(label.mask).save(out / "masks" / f"{stem}.png", optimize=True)
        counts["photos"] += 1
        counts["boxes_filled"] += label.boxes_filled
        counts["boxes_unfilled"] += label.boxes_unfilled
        if done % 100 == 0:
            log.info("%d/%d photos (%.2f s each)", done, len(photos), (time.monotonic() - started) / max(1, counts["photos"]))
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    from .peers import PEERS_HOME, build_peer, describe

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder with images/ and a COCO-format annotations/instances_*.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--home", type=Path, default=PEERS_HOME, help="the peers' environment and weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos by stem")
    args = parser.parse_args(argv)
    counts = label_groups(args.folder, args.out, build_peer("teacher", args.home, threads=args.threads), limit=args.limit)
    licences: dict[str, int] = {}
    for licence, _ in person_boxes(next((args.folder / "annotations").glob("instances_*.json"))).values():
        licences[str(licence)] = licences.get(str(licence), 0) + 1
    provenance_path = args.out / "provenance.json"
    previous = json.loads(provenance_path.read_text()) if provenance_path.exists() else {}
    provenance = {
        "images": str(args.folder),
        "photos": len(list((args.out / "masks").glob("*.png"))),
        "labelled": time.strftime("%Y-%m-%d"),
        "format": "masks/: 8-bit PNG, teacher probability x 255 inside the person boxes it filled, 0 elsewhere; "
        "unlabelled/masks/: 255 = left out of the loss (boxes it did not fill, confident people outside every box); "
        "not human-checked",
        "rule": {
            "box_growth": BOX_GROWTH, "box_margin_px": BOX_MARGIN, "min_fill": MIN_FILL,
            "unexplained_growth_px": UNEXPLAINED_GROWTH,
        },
        "boxes_filled": previous.get("boxes_filled", 0) + counts["boxes_filled"],
        "boxes_unfilled": previous.get("boxes_unfilled", 0) + counts["boxes_unfilled"],
        "photo_licences": dict(sorted(licences.items())),
        **describe(args.home),
    }
    provenance_path.write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("wrote %d labels to %s (%d boxes filled, %d not)", counts["photos"], args.out, counts["boxes_filled"], counts["boxes_unfilled"])


if __name__ == "__main__":
    main()
