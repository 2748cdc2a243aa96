"""Which photos each configured source gives to training, validation and test, and which photos serve as
backgrounds: the committed split lists in ``train/splits`` win over recomputing them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from .config import SourceConfig
from .sources import SPLIT_DIR, Sample, folder_samples, read_split_list, split_samples, write_split_lists

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


def dataset_splits(
    folder: Path, name: str, seed: int, split_dir: Path = SPLIT_DIR, masks_dir: Path | None = None
) -> dict[str, list[Sample]]:
    """The 70/20/10 split of a folder source; committed split lists win over recomputing.

    A source that has grown since its lists were written (more pseudo-labelled photos) keeps every listed
    photo where it was: only the newcomers are split, by the same rule, and appended to the lists, so no
    validation or test photo ever moves into training.
    """
    samples = folder_samples(folder, masks_dir)
    lists = {split: split_dir / f"{name}_{split}.txt" for split in ("train", "val", "test")}
    if all(p.exists() for p in lists.values()):
        by_stem = {s.stem: s for s in samples}
        stems = {split: read_split_list(p) for split, p in lists.items()}
        listed = {stem for names in stems.values() for stem in names}
        newcomers = [s for s in samples if s.stem not in listed]
        if newcomers:
            for split, extra in split_samples(newcomers, seed=seed).items():
                stems[split] += [s.stem for s in extra]
                lists[split].write_text("".join(f"{stem}\n" for stem in stems[split]))
            log.info("%s: %d new photos split and appended to %s", name, len(newcomers), split_dir)
        return {split: [by_stem[stem] for stem in names] for split, names in stems.items()}
    splits = split_samples(samples, seed=seed)
    write_split_lists(splits, split_dir, name)
    return splits


def source_splits(source: SourceConfig, seed: int, root: Path, split_dir: Path = SPLIT_DIR) -> dict[str, list[Sample]]:
    """A configured source's train/val/test samples, with its pseudo-label masks and filters applied."""
    masks_dir = REPO / source.masks / "masks" if source.masks else None
    if source.train_only:
        return {"train": folder_samples(root / source.path, masks_dir), "val": [], "test": []}
    splits = dataset_splits(root / source.path, Path(source.path).name, seed, split_dir, masks_dir)
    if source.empty_only:
        splits = {name: [s for s in samples if _mask_is_empty(s.mask)] for name, samples in splits.items()}
    return splits


def _mask_is_empty(path: Path) -> bool:
    return not np.asarray(Image.open(path)).any()


def background_paths(folder: Path) -> list[Path]:
    return [folder / "images" / f"{p.stem}.jpg" for p in sorted((folder / "masks").glob("*.png")) if _mask_is_empty(p)]
