"""Write downscaled copies of folder sources (same images/ + masks/ layout) for a training machine.

A GPU trains faster than it can decode full-size photos; a long-side-320 copy of the sources (every source
of ``coco-fcdn56``: 68 MB at JPEG 72) is all the training reads at a 320-pixel working resolution
(``cache_long_side``), and it is quick to copy to another machine. The copy is git-ignored (``data_cache/``).

Every photo is copied, with its mask where the folder has one; pseudo-label masks stay in
``train/pseudo_labels/`` and are resized to the copies when loaded. ``--only-with-masks``
names such a pseudo-label folder: photos it has no mask for are never read in training, so they are left out.

Example:
    python -m train.cache --out data_cache --long-side 320 ccp coco128 people/interfaces_cc0 people/congress_pd
    python -m train.train --run-dir train/runs/coco-fcdn56 --resume --data-root data_cache --device cuda
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

from bgremove_plugin.transforms import scaled_size

from .sources import coco_instance_files, data_root


def downscale_folder(
    source: Path, target: Path, long_side: int, *, quality: int = 92, only_stems: set[str] | None = None
) -> int:
    """Copy ``source``'s images (of ``only_stems``, when given) at ``long_side``, each with its mask where it
    has one: a folder may be labelled in part (coco_people's multi-person photos have boxes, no masks, and
    train on pseudo-labels kept elsewhere)."""
    (target / "images").mkdir(parents=True, exist_ok=True)
    count = 0
    for image_path in sorted((source / "images").glob("*.jpg")):
        if only_stems is not None and image_path.stem not in only_stems:
            continue
        image = Image.open(image_path).convert("RGB")
        size = scaled_size(image.width, image.height, long_side)
        image.resize(size, Image.Resampling.LANCZOS).save(target / "images" / image_path.name, quality=quality)
        mask_path = source / "masks" / f"{image_path.stem}.png"
        if mask_path.exists():
            (target / "masks").mkdir(exist_ok=True)
            Image.open(mask_path).convert("L").resize(size, Image.Resampling.BILINEAR).save(target / "masks" / mask_path.name)
        count += 1
    # COCO boxes for object close-ups: kept as they are, since the training code reads them as fractions
    # of each photo's size, which downscaling does not change. Files without categories (captions) are
    # never read in training and stay behind.
    for annotation_file, _ in coco_instance_files(source):
        (target / "annotations").mkdir(exist_ok=True)
        shutil.copyfile(annotation_file, target / "annotations" / annotation_file.name)
    return count


def _mask_filters(parser: argparse.ArgumentParser, items: list[str], sources: list[str]) -> dict[str, str]:
    """NAME=MASK_DIR pairs, refused when a typo would otherwise copy a whole folder or none of it."""
    filters: dict[str, str] = {}
    for item in items:
        name, sep, mask_dir = item.partition("=")
        if not sep or not name or not mask_dir:
            parser.error(f"--only-with-masks {item!r}: expected NAME=MASK_DIR")
        if name not in sources:
            parser.error(f"--only-with-masks {item!r}: {name!r} is not among the sources {sources}")
        if not any(Path(mask_dir).glob("*.png")):
            parser.error(f"--only-with-masks {item!r}: {mask_dir} holds no .png masks")
        filters[name] = mask_dir
    return filters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="folder names under the data root")
    parser.add_argument("--out", type=Path, default=Path("data_cache"))
    parser.add_argument("--long-side", type=int, default=320)
    parser.add_argument("--quality", type=int, default=92, help="JPEG quality of the copies")
    parser.add_argument("--only-with-masks", action="append", default=[], metavar="NAME=MASK_DIR",
                        help="copy only the photos of source NAME that MASK_DIR holds a mask for")
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.data_root or data_root()
    mask_filters = _mask_filters(parser, args.only_with_masks, args.sources)
    for name in args.sources:
        only = {p.stem for p in Path(mask_filters[name]).glob("*.png")} if name in mask_filters else None
        count = downscale_folder(root / name, args.out / name, args.long_side, quality=args.quality, only_stems=only)
        print(f"{name}: {count} images -> {args.out / name}")


if __name__ == "__main__":
    main()
