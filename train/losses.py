"""Training losses beyond plain cross-entropy.

The headline metric is the mean over photos of the person class's IoU, so a photo where the person covers
2% of the frame counts as much as one where they fill it. Cross-entropy counts pixels instead: a small
person's few pixels barely move it, which is where the model is weakest (coco128's busy scenes). The
Lovász-softmax loss (Berman, Triki and Blaschko, CVPR 2018) is the convex extension of the Jaccard loss
over the sorted pixel errors; taken per photo it optimises the same per-photo IoU that is reported.
"""

from __future__ import annotations

import torch


def jaccard_steps(truth_sorted: torch.Tensor) -> torch.Tensor:
    """How much the Jaccard loss grows with each next pixel of a ranking by falling error.

    ``truth_sorted`` holds 1 for the class's pixels and 0 elsewhere, in that order. Marking the first k
    pixels wrong gives a Jaccard loss J_k; the steps are J_1, J_2 - J_1, ..., whose dot product with the
    sorted errors is the loss's piecewise-linear extension. The class must have at least one pixel.
    """
    total = truth_sorted.sum()
    intersection = total - truth_sorted.cumsum(0)
    union = total + (1.0 - truth_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int) -> torch.Tensor:
    """Mean over photos of the Lovász-softmax loss of the classes present in each photo.

    ``logits`` is (N, C, H, W) and ``labels`` (N, H, W) with ``ignore_index`` for pixels left out of the
    loss. A class absent from a photo is skipped there (its IoU is undefined), so a photo without people
    is scored on the background alone; a photo with no labelled pixel at all adds nothing.
    """
    probabilities = logits.float().softmax(dim=1)
    per_photo: list[torch.Tensor] = []
    for probability, label in zip(probabilities, labels):
        valid = label != ignore_index
        probability, label = probability[:, valid], label[valid]
        per_class: list[torch.Tensor] = []
        for cls in range(probability.shape[0]):
            truth = (label == cls).float()
            if truth.sum() == 0:
                continue
            errors, order = (truth - probability[cls]).abs().sort(descending=True)
            per_class.append(torch.dot(errors, jaccard_steps(truth[order])))
        if per_class:
            per_photo.append(torch.stack(per_class).mean())
    if not per_photo:
        return logits.sum() * 0.0  # keeps the graph, so backward() still works on a fully ignored batch
    return torch.stack(per_photo).mean()
