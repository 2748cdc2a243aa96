"""Fit the person/background decision point on the validation split and fold it into the classifier.

A model that is under- or over-confident about people scores lower IoU at the fixed 0.5 threshold than
it could. The best threshold t on validation becomes a shift of the person logit by -logit(t), so the
shipped model's 0.5 is that t and its soft alpha moves with it. Only validation images are used; the
test split stays untouched. Fitted on CCP alone, t was 0.625 for the shipped network, and people it is less
sure of in other photos fell below it; portraits' validation photos now weigh as much (docs/experiments.md).
Fitted on people alone, the threshold only ever pays for a missed person, never for a kept background: on
COCO's people it fell to 0.30-0.40 and the scenes without people kept four times what the shipped weights keep.
A run's validation photos without people are therefore one more group, scored by the share of each picture
left out (docs/experiments.md, "The decision point with the scenes without people").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from bgremove_plugin.model import TiramisuNet

from .metrics import person_iou

THRESHOLDS = tuple(round(t, 3) for t in np.linspace(0.2, 0.8, 25))


def best_threshold(
    groups: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], *, without_people: Sequence[np.ndarray] = ()
) -> tuple[float, float, float]:
    """(threshold, score there, score at 0.5) over ``THRESHOLDS`` plus 0.5, for groups of (probabilities,
    masks). The score is each group's mean IoU averaged with equal weight per group: a group is one
    source's validation photos, so CCP's 201 full-body photos do not decide alone for portraits.
    ``without_people``, probabilities of validation photos with nobody in them, is one more group of equal
    weight, each photo scoring the share of its pixels below the threshold (1 when nothing is kept): the
    IoU of a photo without people is 0 for a single kept pixel, which would let one stray blob decide."""
    if not groups or not all(len(probabilities) for probabilities, _ in groups):
        raise ValueError("every calibration group needs at least one validation photo")

    def balanced_score(threshold: float) -> float:
        scores = [
            np.mean([person_iou(p, m, threshold) for p, m in zip(probabilities, masks)]) for probabilities, masks in groups
        ]
        if without_people:
            scores.append(np.mean([1.0 - float((p >= threshold).mean()) for p in without_people]))
        return float(np.mean(scores))

    scores = {t: balanced_score(t) for t in (*THRESHOLDS, 0.5)}
    chosen = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
    return chosen, scores[chosen], scores[0.5]


def shift_person_logit(model: TiramisuNet, threshold: float) -> None:
    """Make probability ``threshold`` the model's new 0.5 (softmax over 2 classes = sigmoid of the logit gap)."""
    bias = model.classifier.bias
    if bias is None:
        raise ValueError("the classifier has no bias to shift")
    with torch.no_grad():
        bias[1] -= math.log(threshold / (1.0 - threshold))
