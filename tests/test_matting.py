"""refine="matting": a trimap from the segmentation, closed-form matting in its unknown band."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bgremove_plugin import BackendUnavailableError, BackgroundRemover
from bgremove_plugin.matting import trimap_from_probability

from .conftest import PORTRAIT


def _soft_edge_photo(width: int = 400, height: int = 300, ramp: float = 12.0) -> tuple[Image.Image, np.ndarray]:
    """A red person on a green background with a ``ramp``-pixel soft edge: the photo and its true alpha."""
    alpha_row = np.clip((np.arange(width, dtype=np.float32) - 0.55 * width) / ramp + 0.5, 0.0, 1.0)
    alpha = np.tile(alpha_row, (height, 1))
    person, background = np.array([200, 40, 30], np.float32), np.array([30, 190, 40], np.float32)
    photo = alpha[..., None] * person + (1 - alpha[..., None]) * background
    return Image.fromarray(photo.round().astype(np.uint8)), alpha


def _blurry_network_view(alpha: np.ndarray, long_side: int = 48) -> np.ndarray:
    """A coarse, over-smooth probability, as a network at a low working resolution gives."""
    height, width = alpha.shape
    small = Image.fromarray(alpha.astype(np.float32), mode="F").resize(
        (long_side, round(long_side * height / width)), Image.Resampling.BOX
    )
    blurred = Image.fromarray((np.asarray(small) * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(1))
    return np.asarray(blurred, dtype=np.float32) / 255.0


def test_matting_recovers_a_soft_edge_better_than_bilinear_upsampling() -> None:
    from bgremove_plugin.matting import matte

    photo, truth = _soft_edge_photo()
    low = _blurry_network_view(truth)
    bilinear = np.asarray(Image.fromarray(low, mode="F").resize(photo.size, Image.Resampling.BILINEAR))
    matted = matte(low, photo)
    assert matted.mode == "L" and matted.size == photo.size
    values = np.asarray(matted, dtype=np.float32) / 255.0
    assert values.min() >= 0.0 and values.max() <= 1.0
    band = np.abs(np.arange(photo.width) - 0.55 * photo.width) < 30  # the columns around the edge
    error_bilinear = np.abs(bilinear - truth)[:, band].mean()
    error_matted = np.abs(values - truth)[:, band].mean()
    assert error_matted < 0.5 * error_bilinear, (error_matted, error_bilinear)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_matting_leaves_an_all_background_or_all_person_map_alone(value: float) -> None:
    from bgremove_plugin.matting import matte

    photo, _ = _soft_edge_photo(300, 200)  # the photo has an edge; the map has none and must not gain one
    matted = np.asarray(matte(np.full((40, 60), value, np.float32), photo))
    assert np.abs(matted.astype(int) - round(value * 255)).max() <= 1


def test_the_unknown_band_grows_with_the_persons_size() -> None:
    def band_width(person_side: int) -> int:
        probability = np.zeros((400, 400), np.float32)
        probability[200 - person_side // 2 : 200 + person_side // 2, 200 - person_side // 2 : 200 + person_side // 2] = 1
        trimap = trimap_from_probability(probability)
        assert set(np.unique(trimap)) == {0.0, 0.5, 1.0}
        return int((trimap[200] == 0.5).sum())

    assert band_width(60) < band_width(300)


def test_matting_through_the_api() -> None:
    photo = Image.open(PORTRAIT).resize((256, 256))
    remover = BackgroundRemover(device="cpu", refine="matting")
    cutout = remover.remove(photo)
    assert cutout.mode == "RGBA" and cutout.size == photo.size
    alpha = np.asarray(cutout.getchannel("A"))
    guided = np.asarray(remover.remove(photo, refine="guided", return_mask=True))
    assert not np.array_equal(alpha, guided)
    assert abs(float((alpha > 127).mean()) - float((guided > 127).mean())) < 0.1  # same person, other edges


def test_without_pymatting_matting_fails_clearly(monkeypatch: pytest.MonkeyPatch, tiny_weights: object) -> None:
    monkeypatch.setitem(sys.modules, "pymatting", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'bgremove_plugin\[matting\]'"):
        BackgroundRemover(tiny_weights, device="cpu", refine="matting")  # type: ignore[arg-type]
    remover = BackgroundRemover(tiny_weights, device="cpu")  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailableError, match="pymatting"):
        remover.remove(Image.open(PORTRAIT), refine="matting")


def test_matting_prints_nothing(tiny_weights: object, capsys: pytest.CaptureFixture[str]) -> None:
    # Random tiny weights give a ragged trimap on which pymatting's factorisation retries (and prints).
    remover = BackgroundRemover(tiny_weights, device="cpu", refine="matting")  # type: ignore[arg-type]
    remover.remove(Image.open(PORTRAIT).resize((128, 128)))
    assert capsys.readouterr().out == ""
