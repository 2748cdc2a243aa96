"""Segmentation metrics. IoU of the person class is the headline number."""

from __future__ import annotations

import numpy as np


def person_iou(probability: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``probability >= threshold`` against a boolean/0-255 truth mask.

    Both empty (no person predicted, none present) counts as a perfect 1.0: the image was handled right.
    """
    predicted = probability >= threshold
    actual = truth > 127 if truth.dtype == np.uint8 else truth.astype(bool)
    union = np.logical_or(predicted, actual).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(predicted, actual).sum() / union)
