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


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return mask > 127 if mask.dtype == np.uint8 else mask.astype(bool)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it; the image border does not count as an edge."""
    from scipy import ndimage  # type: ignore[import-untyped,unused-ignore]

    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def boundary_f_score(
    probability: np.ndarray, truth: np.ndarray, *, tolerance: float = 3.0, threshold: float = 0.5
) -> float:
    """F-measure of the predicted outline against the true one, a match being within ``tolerance`` pixels.

    This scores edges only, so a halo or a jagged outline costs here even when IoU barely moves. Both
    outlines empty (no person anywhere) is a perfect 1.0; one empty is 0.0.
    """
    from scipy import ndimage  # type: ignore[import-untyped,unused-ignore]

    predicted = _boundary(probability >= threshold)
    actual = _boundary(_as_bool(truth))
    if not predicted.any() and not actual.any():
        return 1.0
    if not predicted.any() or not actual.any():
        return 0.0
    to_actual = ndimage.distance_transform_edt(~actual)
    to_predicted = ndimage.distance_transform_edt(~predicted)
    precision = float((to_actual[predicted] <= tolerance).mean())
    recall = float((to_predicted[actual] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def mean_absolute_error(probability: np.ndarray, truth: np.ndarray) -> float:
    """Mean |soft prediction - truth| with truth scaled to [0, 1]; rewards confident, correct alphas."""
    actual = truth.astype(np.float32) / 255.0 if truth.dtype == np.uint8 else truth.astype(np.float32)
    return float(np.abs(probability.astype(np.float32) - actual).mean())


EDGE_DISTANCE_BANDS = (2.0, 5.0, 10.0, 20.0, 40.0)
"""Upper ends, in pixels, of the distance bands of :func:`errors_by_edge_distance`; one more band holds the rest."""


def edge_distance_labels(bands: tuple[float, ...] = EDGE_DISTANCE_BANDS) -> list[str]:
    lows = (0.0, *bands)
    return [f"{low:g}-{high:g} px" for low, high in zip(lows, bands, strict=False)] + [f">={bands[-1]:g} px"]


def errors_by_edge_distance(
    probability: np.ndarray, truth: np.ndarray, *, threshold: float = 0.5, bands: tuple[float, ...] = EDGE_DISTANCE_BANDS
) -> tuple[list[int], int]:
    """Wrong pixels (person missed or background kept) counted by their distance from the true outline, and
    the union of predicted and true person.

    IoU alone cannot say whether a model loses at its edges (a soft or shifted outline, the first band) or
    whole regions (a missed leg, a kept reflection: the far bands); summed over a set and divided by the
    summed union, the bands add up to that set's pooled 1 - IoU. With no outline in the image (no person,
    or one filling the frame) every wrong pixel is far from it.
    """
    from scipy import ndimage  # type: ignore[import-untyped,unused-ignore]

    predicted = probability >= threshold
    actual = _as_bool(truth)
    outline = _boundary(actual)
    wrong = predicted != actual
    distance = ndimage.distance_transform_edt(~outline) if outline.any() else np.full(actual.shape, np.inf)
    band_of_pixel = np.searchsorted(np.asarray(bands), distance[wrong], side="right")
    counts = np.bincount(band_of_pixel, minlength=len(bands) + 1)
    return [int(c) for c in counts], int(np.logical_or(predicted, actual).sum())
