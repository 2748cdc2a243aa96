"""Pseudo-label photos of people that have no masks, with the peers' average as the teacher.

Runs in the peers' environment (``python -m train.peers setup``)::

    .peers/venv/bin/python -m train.teacher ../shared/data/people/interfaces_cc0 \
        --out train/pseudo_labels/interfaces_cc0

Writes ``masks/<stem>.png`` (8-bit soft probability, 255 = person, the photo's size) and
``provenance.json`` (teacher, weights' checksums, versions). A training source points at the photos and
takes its masks from here (``SourceConfig.masks``); masks that exist are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .peers import PEERS_HOME, build_peer, describe

log = logging.getLogger("train.teacher")


def label_folder(
    folder: Path, out: Path, *, home: Path = PEERS_HOME, threads: int = 2, limit: int | None = None
) -> int:
    """Label ``folder/images/*.jpg`` (the first ``limit`` in name order, or all) that have no mask in
    ``out/masks`` yet; returns how many were written."""
    available = sorted((folder / "images").glob("*.jpg"))
    if not available:
        raise FileNotFoundError(f"no images/*.jpg in {folder}")
    images = available[:limit] if limit else available
    (out / "masks").mkdir(parents=True, exist_ok=True)
    todo = [p for p in images if not (out / "masks" / f"{p.stem}.png").exists()]
    teacher = build_peer("teacher", home, threads=threads) if todo else None
    started = time.monotonic()
    for count, path in enumerate(todo, 1):
        with Image.open(path) as image:
            # Training reads the photo without applying EXIF orientation, so the mask must match the stored pixels.
            rgb = np.asarray(image.convert("RGB"))
        probability = teacher(rgb)  # type: ignore[misc]
        Image.fromarray(np.round(probability * 255).astype(np.uint8)).save(out / "masks" / f"{path.stem}.png")
        if count % 50 == 0:
            log.info("%d/%d labelled (%.2f s per photo)", count, len(todo), (time.monotonic() - started) / count)
    provenance = {
        "images": str(folder),
        "count": len(images),
        "photos_in_folder": len(available),
        "labelled": time.strftime("%Y-%m-%d"),
        "format": "8-bit PNG, soft probability x 255 of the teacher; not human-checked",
        **describe(home),
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return len(todo)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder holding images/*.jpg")
    parser.add_argument("--out", type=Path, required=True, help="where masks/ and provenance.json go")
    parser.add_argument("--home", type=Path, default=PEERS_HOME, help="the peers' environment and weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="label only the first N photos in name order")
    args = parser.parse_args(argv)
    written = label_folder(args.folder, args.out, home=args.home, threads=args.threads, limit=args.limit)
    log.info("wrote %d masks to %s", written, args.out / "masks")


if __name__ == "__main__":
    main()
