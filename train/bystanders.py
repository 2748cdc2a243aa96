"""Find the people a human-labelled set leaves out, so that training does not call them background.

CCP labels only the photo's main subject: passers-by behind them are background in its masks. Trained on
that, the network learns that small, distant people are not people (the shipped weights give a median
alpha of 0.06 to them), which is exactly what coco128's busy scenes need it to find. This marks them, for
the loss to skip (``SourceConfig.ignore_regions``), rather than relabelling them as people: the detector is
a selfie model run on tiles, not a human, and it sometimes fires on a shadow or a poster.

Runs in the peers' environment (``python -m train.peers setup``)::

    .peers/venv/bin/python -m train.bystanders ../shared/data/ccp --stems train/splits/ccp_train.txt \
        --out train/pseudo_labels/ccp_bystanders

Writes ``masks/<stem>.png`` (8-bit, 255 = leave out of the loss, the photo's size) for the photos where
something was found, and ``provenance.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .peers import PEERS_HOME, build_peer, describe

log = logging.getLogger("train.bystanders")

Segmenter = Callable[[np.ndarray], np.ndarray]
"""RGB uint8 (H, W, 3) -> person probability (H, W) in [0, 1]."""

TILE_FRACTION = 0.75
"""Tile side as a share of the photo's short side: on a 550x825 CCP photo, a passer-by of a fifth of the
photo's height fills a third of a tile, large enough for a 256 px selfie model."""
TILE_OVERLAP = 0.25
PERSON_THRESHOLD = 0.5
SUBJECT_MARGIN = 10
"""Pixels around the labelled subject that stay in the loss, so that its outline is still learned."""
REGION_GROWTH = 4
"""Pixels added around each found person: the selfie model's outline is coarse."""


def tile_starts(length: int, tile: int, overlap: float = TILE_OVERLAP) -> list[int]:
    """Evenly spaced starts of tiles of side ``tile`` covering ``length``, adjacent ones overlapping by at
    least ``overlap`` of a tile."""
    if tile >= length:
        return [0]
    count = math.ceil((length - tile) / (tile * (1 - overlap))) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tiled_probability(rgb: np.ndarray, segment: Segmenter, *, tile_fraction: float = TILE_FRACTION) -> np.ndarray:
    """The largest person probability any view gives each pixel: the whole photo, and square tiles of
    ``tile_fraction`` of its short side, where small people are large enough to be seen."""
    height, width = rgb.shape[:2]
    probability = segment(rgb).astype(np.float32)
    side = max(1, round(min(height, width) * tile_fraction))
    for top in tile_starts(height, side):
        for left in tile_starts(width, side):
            window = (slice(top, top + side), slice(left, left + side))
            probability[window] = np.maximum(probability[window], segment(np.ascontiguousarray(rgb[window])))
    return probability


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * pixels + 1))
    return np.asarray(grown) > 127


def bystander_region(
    probability: np.ndarray, subject: np.ndarray, *, threshold: float = PERSON_THRESHOLD,
    subject_margin: int = SUBJECT_MARGIN, growth: int = REGION_GROWTH,
) -> np.ndarray:
    """Boolean mask of the people in ``probability`` that the label ``subject`` (boolean) leaves out,
    grown by ``growth`` px and kept ``subject_margin`` px clear of the subject."""
    found = _grow(probability > threshold, growth)
    return found & ~_grow(subject, subject_margin)


def label_folder(
    folder: Path, out: Path, segment: Segmenter, *, stems: Sequence[str] | None = None, min_share: float = 0.001
) -> dict[str, float]:
    """Write a region mask for each photo of ``folder`` (or of ``stems``) whose bystanders cover at least
    ``min_share`` of it; returns stem -> share for the photos written."""
    chosen = list(stems) if stems is not None else sorted(p.stem for p in (folder / "images").glob("*.jpg"))
    (out / "masks").mkdir(parents=True, exist_ok=True)
    shares: dict[str, float] = {}
    started = time.monotonic()
    for count, stem in enumerate(chosen, 1):
        with Image.open(folder / "images" / f"{stem}.jpg") as image:
            rgb = np.asarray(image.convert("RGB"))
        with Image.open(folder / "masks" / f"{stem}.png") as label:
            subject = np.asarray(label.convert("L")) > 127
        region = bystander_region(tiled_probability(rgb, segment), subject)
        share = float(region.mean())
        if share >= min_share:
            Image.fromarray(region.astype(np.uint8) * 255).save(out / "masks" / f"{stem}.png")
            shares[stem] = round(share, 5)
        if count % 100 == 0:
            log.info("%d/%d photos (%.2f s each), %d with bystanders", count, len(chosen),
                     (time.monotonic() - started) / count, len(shares))
    return shares


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder holding images/*.jpg and masks/*.png")
    parser.add_argument("--out", type=Path, required=True, help="where masks/ and provenance.json go")
    parser.add_argument("--stems", type=Path, default=None, help="a split list: only these photos")
    parser.add_argument("--home", type=Path, default=PEERS_HOME, help="the peers' environment and weights")
    args = parser.parse_args(argv)
    listed = [s for s in args.stems.read_text().split() if s] if args.stems else None
    stems = listed if listed is not None else sorted(p.stem for p in (args.folder / "images").glob("*.jpg"))
    detector = "mediapipe0"
    shares = label_folder(args.folder, args.out, build_peer(detector, args.home), stems=stems)
    details = describe(args.home)
    provenance = {
        "images": str(args.folder),
        "stems": str(args.stems) if args.stems else "all",
        "photos_checked": len(stems),
        "photos_with_bystanders": len(shares),
        "labelled": time.strftime("%Y-%m-%d"),
        "format": "8-bit PNG, 255 = a person the label leaves out (left out of the loss); not human-checked",
        "detector": f"{detector} on the whole photo and on square tiles of {TILE_FRACTION} of its short side "
                    f"({TILE_OVERLAP} overlap), per-pixel maximum > {PERSON_THRESHOLD}, grown {REGION_GROWTH} px, "
                    f"{SUBJECT_MARGIN} px clear of the labelled subject",
        "mediapipe": details.get("mediapipe"),
        "share_of_photo": shares,
    }
    (args.out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("%d of %s photos hold bystanders; masks in %s", len(shares), provenance["photos_checked"], args.out / "masks")


if __name__ == "__main__":
    main()
