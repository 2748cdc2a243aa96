"""Quality of the shipped default weights on real photos they were not trained on: each set gives what
``train.candidate`` measured for them (train/shipped_candidate.json, rewritten whenever weights ship), so
a change that moves the cut-outs fails here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgremove_plugin import BackgroundRemover

from .conftest import REPO

SHIPPED = json.loads((REPO / "train" / "shipped_candidate.json").read_text())
TOLERANCE = 0.002
"""The same photos through the same code: only floating-point noise between machines may differ."""


def _split(name: str) -> list[str]:
    return (REPO / "train" / "splits" / f"{name}.txt").read_text().split()


def _ious(remover: BackgroundRemover, folder: Path, stems: list[str]) -> dict[str, float]:
    ious = {}
    for stem in stems:
        predicted = remover.predict_alpha([folder / "images" / f"{stem}.jpg"])[0] >= 0.5
        truth = np.asarray(Image.open(folder / "masks" / f"{stem}.png").convert("L")) > 127
        union = np.logical_or(predicted, truth).sum()
        ious[stem] = 1.0 if union == 0 else float(np.logical_and(predicted, truth).sum() / union)
    return ious


@pytest.fixture(scope="module")
def remover() -> BackgroundRemover:
    return BackgroundRemover(device="cpu")


@pytest.mark.parametrize(("report", "folder", "split", "count"), [
    ("ccp_test", "ccp", "ccp_test", 100),
    ("coco_test_original", "coco_people", "coco_people_test_original", 34),
])
def test_the_shipped_weights_score_what_their_report_says(
    remover: BackgroundRemover, data_root: Path, report: str, folder: str, split: str, count: int
) -> None:
    stems = _split(split)
    assert len(stems) == count
    iou = float(np.mean(list(_ious(remover, data_root / folder, stems).values())))
    assert iou == pytest.approx(SHIPPED[report]["iou"], abs=TOLERANCE), f"mean IoU on {split} is {iou:.4f}"


def test_coco128_people_covering_a_fifth_of_the_frame_are_found(remover: BackgroundRemover, data_root: Path) -> None:
    """A different source from training (COCO's busy scenes): the photos where people cover 20% or more."""
    folder = data_root / "coco128"
    stems = [m.stem for m in sorted((folder / "masks").glob("*.png")) if np.asarray(Image.open(m)).mean() / 255 >= 0.2]
    assert len(stems) == 21
    expected = float(np.mean([SHIPPED["coco128_people"]["per_image_iou"][stem] for stem in stems]))
    iou = float(np.mean(list(_ious(remover, folder, stems).values())))
    assert iou == pytest.approx(expected, abs=TOLERANCE)
