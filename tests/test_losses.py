from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.data import IGNORE_LABEL
from train.losses import lovasz_softmax


def _confident_logits(predicted: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is the one-hot of ``predicted`` (N, H, W) to within float precision."""
    return F.one_hot(predicted, 2).permute(0, 3, 1, 2).float() * 40.0


def _class_iou(predicted: np.ndarray, label: np.ndarray, cls: int) -> float:
    valid = label != IGNORE_LABEL
    ours, truth = (predicted == cls) & valid, (label == cls) & valid
    return float((ours & truth).sum() / (ours | truth).sum())


def test_for_confident_predictions_it_is_one_minus_the_iou_of_each_class_present() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(3, 16, 16))
    labels[0, :4] = IGNORE_LABEL
    labels[1] = 0  # a photo without people: scored on the background alone
    predicted = np.where(rng.random((3, 16, 16)) < 0.8, labels.clip(0, 1), 1 - labels.clip(0, 1))
    expected = [
        np.mean([1 - _class_iou(predicted[i], labels[i], cls) for cls in (0, 1) if (labels[i] == cls).any()])
        for i in range(3)
    ]
    loss = lovasz_softmax(_confident_logits(torch.from_numpy(predicted)), torch.from_numpy(labels),
                          ignore_index=IGNORE_LABEL)
    assert loss.item() == pytest.approx(float(np.mean(expected)), abs=1e-5)
    assert 0.1 < loss.item() < 0.5  # the 20% of flipped pixels cost something, not everything


def test_missing_a_small_person_costs_nearly_as_much_as_missing_a_large_one() -> None:
    # Cross-entropy counts pixels, so a 4-pixel person barely moves it; per-photo IoU, the reported metric,
    # loses the whole person either way.
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[0, :2, :2] = 1
    labels[1, :20, :20] = 1
    blind = _confident_logits(torch.zeros(2, 32, 32, dtype=torch.long)) / 10  # sure there is no one
    small = lovasz_softmax(blind[:1], labels[:1], ignore_index=IGNORE_LABEL)
    large = lovasz_softmax(blind[1:], labels[1:], ignore_index=IGNORE_LABEL)
    # The person class adds 1 - IoU = 1 to both (halved by the two classes' mean); the large person's
    # photo also loses background IoU (0.61), the small one's hardly any.
    assert small.item() == pytest.approx(0.5, abs=0.01) and large.item() == pytest.approx(0.69, abs=0.01)
    cross_entropy_small = F.cross_entropy(blind[:1], labels[:1])
    cross_entropy_large = F.cross_entropy(blind[1:], labels[1:])
    assert cross_entropy_large.item() > 25 * cross_entropy_small.item()


def test_ignored_pixels_neither_count_nor_receive_gradient() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (2, 12, 12))
    ignored = labels.clone()
    ignored[:, :, :5] = IGNORE_LABEL
    logits = torch.randn(2, 2, 12, 12, requires_grad=True)
    loss = lovasz_softmax(logits, ignored, ignore_index=IGNORE_LABEL)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[:, :, :, :5] == 0) and logits.grad[:, :, :, 5:].abs().sum() > 0
    # Whatever the network says there changes nothing.
    changed = logits.detach().clone()
    changed[:, :, :, :5] = torch.randn(2, 2, 12, 5) * 10
    assert lovasz_softmax(changed, ignored, ignore_index=IGNORE_LABEL).item() == pytest.approx(loss.item())


def test_a_batch_with_every_pixel_ignored_adds_nothing_and_still_backpropagates() -> None:
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    loss = lovasz_softmax(logits, torch.full((2, 8, 8), IGNORE_LABEL), ignore_index=IGNORE_LABEL)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None and torch.all(logits.grad == 0)


def test_gradient_descent_on_it_raises_the_iou() -> None:
    torch.manual_seed(1)
    labels = torch.zeros(1, 24, 24, dtype=torch.long)
    labels[0, 6:18, 8:16] = 1
    logits = torch.randn(1, 2, 24, 24, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=500.0)  # each pixel gets about 1/pixels of the gradient

    def iou() -> float:
        return _class_iou(logits.argmax(1)[0].numpy(), labels[0].numpy(), 1)

    before = iou()
    for _ in range(30):
        optimizer.zero_grad()
        lovasz_softmax(logits, labels, ignore_index=IGNORE_LABEL).backward()
        optimizer.step()
    assert before < 0.5 and iou() > 0.95
