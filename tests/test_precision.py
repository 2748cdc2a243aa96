"""Number formats: what "auto" picks on which CPU, bfloat16's agreement with float32, and bad values."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bgremove_plugin import BackgroundRemover, InvalidArgumentError, api, precision
from bgremove_plugin.transforms import prepare_batch

from .conftest import FIXTURES, PORTRAIT, shared_data_root


def pretend_cpu_has_bfloat16(monkeypatch: pytest.MonkeyPatch, has: bool) -> None:
    for module in (api, precision):
        monkeypatch.setattr(module, "cpu_has_bfloat16", lambda: has)


def test_auto_runs_pytorch_in_bfloat16_on_a_cpu_that_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_cpu_has_bfloat16(monkeypatch, True)
    remover = BackgroundRemover(device="cpu")
    assert (remover.backend, remover.precision) == ("torch", "bfloat16")
    assert "precision=bfloat16" in repr(remover)


def test_auto_runs_onnx_runtime_in_float32_on_a_cpu_without_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_cpu_has_bfloat16(monkeypatch, False)
    remover = BackgroundRemover(device="cpu")
    assert (remover.backend, remover.precision) == ("onnx", "float32")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the [onnx] extra not installed
    remover = BackgroundRemover(device="cpu")
    assert (remover.backend, remover.precision) == ("torch", "float32")


def test_asking_for_float32_takes_the_faster_float32_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_cpu_has_bfloat16(monkeypatch, True)
    assert BackgroundRemover(device="cpu", precision="float32").backend == "onnx"
    remover = BackgroundRemover(device="cpu", backend="torch", precision="float32")
    assert (remover.backend, remover.precision) == ("torch", "float32")


def test_bad_precisions_are_typed_errors_naming_the_choices() -> None:
    with pytest.raises(InvalidArgumentError, match="'auto', 'float32', 'bfloat16'"):
        BackgroundRemover(device="cpu", precision="float16")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="backend='onnx' runs in float32"):
        BackgroundRemover(device="cpu", backend="onnx", precision="bfloat16")


def test_bfloat16_really_runs_in_bfloat16_and_stays_close_to_float32() -> None:
    half = BackgroundRemover(device="cpu", backend="torch", precision="bfloat16")
    full = BackgroundRemover(device="cpu", backend="torch", precision="float32")
    net = full.model
    batch, _ = prepare_batch([Image.open(PORTRAIT).convert("RGB")], long_side=net.input_size,
                             multiple=net.pad_multiple, mean=net.mean, std=net.std)
    with torch.inference_mode():
        difference = (half._person_probability(batch) - full._person_probability(batch)).abs()
    assert 0.0 < float(difference.max()) < 0.15
    assert float(difference.mean()) < 0.005


def test_bfloat16_cutouts_match_float32_on_real_photos() -> None:
    photos = [Image.open(p).convert("RGB") for p in (PORTRAIT, FIXTURES / "chelsea.jpg", FIXTURES / "coffee.jpg")]
    ccp = shared_data_root() / "ccp" / "images"
    if ccp.is_dir():
        photos += [Image.open(p).convert("RGB") for p in sorted(ccp.glob("*.jpg"))[:6]]
    half = BackgroundRemover(device="cpu", backend="torch", precision="bfloat16")
    full = BackgroundRemover(device="cpu", backend="torch", precision="float32")
    intersection = union = 0
    for photo in photos:
        a = np.asarray(half.remove(photo, return_mask=True)) >= 128
        b = np.asarray(full.remove(photo, return_mask=True)) >= 128
        assert (a != b).mean() < 0.01, "bfloat16 moved more than 1% of a photo's pixels across the cut"
        intersection, union = intersection + (a & b).sum(), union + (a | b).sum()
    assert intersection / union > 0.98
