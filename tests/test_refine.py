"""Edge refinement: the guided filter that brings the network's map to full resolution."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgremove_plugin import InvalidArgumentError
from bgremove_plugin.refine import box_mean, check_refine, estimate_foreground, guided_upsample


def _step_photo(width: int = 640, height: int = 480, edge: float = 0.53) -> tuple[Image.Image, np.ndarray]:
    """A bright 'person' on the right of a dark background, with a one-pixel soft edge, and its alpha."""
    x = np.arange(width, dtype=np.float32)
    alpha_row = np.clip(x - edge * width + 0.5, 0.0, 1.0)
    alpha = np.tile(alpha_row, (height, 1))
    photo = (40 + 170 * alpha).round().astype(np.uint8)
    return Image.fromarray(np.stack([photo] * 3, axis=-1)), alpha


def _network_view(alpha: np.ndarray, long_side: int = 160) -> np.ndarray:
    """What a network at a low working resolution sees: the truth downsampled and softened."""
    height, width = alpha.shape
    small = (long_side, round(long_side * height / width))
    image = Image.fromarray(alpha.astype(np.float32), mode="F").resize(small, Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


def test_box_mean_matches_a_brute_force_window_mean() -> None:
    values = np.random.default_rng(0).random((9, 13)).astype(np.float32)
    radius = 2
    expected = np.empty_like(values)
    for y in range(9):
        for x in range(13):
            expected[y, x] = values[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1].mean()
    np.testing.assert_allclose(box_mean(values, radius), expected, atol=1e-5)


def test_guided_keeps_size_mode_and_range() -> None:
    photo, alpha = _step_photo(333, 517)
    refined = guided_upsample(_network_view(alpha), photo)
    assert refined.mode == "L" and refined.size == photo.size
    values = np.asarray(refined)
    assert values.min() >= 0 and values.max() <= 255 and values.min() < 10 and values.max() > 245


def test_guided_edge_is_sharper_and_where_the_photo_has_it() -> None:
    photo, alpha = _step_photo()
    low = _network_view(alpha, long_side=128)  # a 5x smaller working map, as for a 1,100 px photo
    bilinear = np.asarray(
        Image.fromarray(low, mode="F").resize(photo.size, Image.Resampling.BILINEAR), dtype=np.float32
    )
    guided = np.asarray(guided_upsample(low, photo), dtype=np.float32) / 255.0
    row_truth, row_bilinear, row_guided = alpha[240], bilinear[240], guided[240]

    def ramp(row: np.ndarray) -> int:  # pixels caught between background and person
        return int(((row > 0.2) & (row < 0.8)).sum())

    def crossing(row: np.ndarray) -> int:
        return int(np.argmax(row >= 0.5))

    assert ramp(row_guided) <= 2 < ramp(row_bilinear)
    assert abs(crossing(row_guided) - crossing(row_truth)) <= 1
    # Away from the edge both stay close to the truth: refinement must not bleed.
    far = np.abs(np.arange(photo.width) - crossing(row_truth)) > 12
    assert np.abs(row_guided - row_truth)[far].max() < 0.1


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_guided_leaves_an_all_background_or_all_person_map_alone(value: float) -> None:
    photo, _ = _step_photo(300, 200)  # the photo has an edge; the map has none, and must not gain one
    refined = np.asarray(guided_upsample(np.full((40, 60), value, np.float32), photo))
    assert np.abs(refined.astype(int) - round(value * 255)).max() <= 1


def test_large_photos_are_refined_block_by_block_without_seams() -> None:
    photo, alpha = _step_photo(700, 1100)  # taller than several row blocks
    refined = np.asarray(guided_upsample(_network_view(alpha), photo), dtype=np.int16)
    # Every row crosses the same vertical edge, so all rows must agree closely.
    assert np.abs(refined - refined[0]).max() <= 2


def test_unknown_refine_mode_is_rejected() -> None:
    assert check_refine("none") == "none"
    with pytest.raises(InvalidArgumentError, match="refine='matte' is not one of"):
        check_refine("matte")


def _spill_photo(width: int = 400, height: int = 300) -> tuple[Image.Image, Image.Image, np.ndarray]:
    """A red person on a green background with a 30-pixel soft edge: photo, alpha and the true colours."""
    ramp = np.clip((np.arange(width, dtype=np.float32) - 0.5 * width) / 30.0 + 0.5, 0.0, 1.0)
    alpha = np.tile(ramp, (height, 1))[..., None]
    person, background = np.array([200, 40, 30], np.float32), np.array([30, 190, 40], np.float32)
    photo = alpha * person + (1 - alpha) * background
    return (
        Image.fromarray(photo.round().astype(np.uint8)),
        Image.fromarray((alpha[..., 0] * 255).round().astype(np.uint8)),
        np.broadcast_to(person, photo.shape),
    )


def test_foreground_estimation_removes_the_old_background_from_soft_edges() -> None:
    photo, alpha, true_colours = _spill_photo()
    estimated = np.asarray(estimate_foreground(photo, alpha), dtype=np.float32)
    a = np.asarray(alpha)
    edge = (a > 25) & (a < 230)
    spill_before = np.abs(np.asarray(photo, dtype=np.float32) - true_colours)[edge].mean()
    spill_after = np.abs(estimated - true_colours)[edge].mean()
    assert spill_after < 0.25 * spill_before
    # Opaque and fully transparent pixels are the photo's own.
    settled = (a == 0) | (a == 255)
    np.testing.assert_array_equal(estimated[settled], np.asarray(photo)[settled])


def test_foreground_estimation_keeps_size_and_handles_no_edges() -> None:
    photo, _, _ = _spill_photo(123, 77)
    for value in (0, 255):
        same = estimate_foreground(photo, Image.new("L", photo.size, value))
        assert same.size == photo.size and same.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(same), np.asarray(photo))
