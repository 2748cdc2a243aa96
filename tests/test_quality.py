"""Quality of the shipped default weights on real photos they were not trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgremove_plugin import BackgroundRemover

from .conftest import REPO


def _test_split(data_root: Path) -> list[str]:
    return (REPO / "train" / "splits" / "ccp_test.txt").read_text().split()


def _mean_iou(remover: BackgroundRemover, images: list[Path], masks: list[Path]) -> float:
    ious = []
    for image, mask in zip(images, masks):
        predicted = remover.predict_alpha([image])[0] >= 0.5
        truth = np.asarray(Image.open(mask).convert("L")) > 127
        union = np.logical_or(predicted, truth).sum()
        ious.append(1.0 if union == 0 else np.logical_and(predicted, truth).sum() / union)
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def remover() -> BackgroundRemover:
    return BackgroundRemover(device="cpu")


def test_ccp_test_split_iou_does_not_regress(remover: BackgroundRemover, data_root: Path) -> None:
    stems = _test_split(data_root)
    assert len(stems) == 100
    folder = data_root / "ccp"
    iou = _mean_iou(remover, [folder / "images" / f"{s}.jpg" for s in stems], [folder / "masks" / f"{s}.png" for s in stems])
    # The first-release bar; measured 0.914 for the shipped weights (gpu-fcdn56 epoch 140, see model_card.md).
    assert iou >= CCP_FLOOR, f"mean IoU on the CCP test split is {iou:.3f}"


def test_coco128_people_are_found(remover: BackgroundRemover, data_root: Path) -> None:
    """A different source from training (COCO's busy scenes, many small people): a floor, not a target."""
    folder = data_root / "coco128"
    masks = [m for m in sorted((folder / "masks").glob("*.png")) if np.asarray(Image.open(m)).mean() / 255 >= 0.2]
    assert len(masks) >= 10
    iou = _mean_iou(remover, [folder / "images" / f"{m.stem}.jpg" for m in masks], masks)
    assert iou >= COCO_FLOOR, f"mean IoU on coco128 images where people cover >= 20% is {iou:.3f}"


CCP_FLOOR = 0.85
COCO_FLOOR = 0.35  # measured 0.534 on these 21 images (epoch 140, two-source decision point; 0.523 with CCP's; 0.515 with epoch 118, 0.46 with epoch 101)
