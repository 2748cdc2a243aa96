from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bgremove_plugin.transforms import (
    normalize,
    pad_to_multiple,
    person_probability,
    prepare_batch,
    scaled_size,
    to_rgb,
    unpad_and_resize,
    working_size,
)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("RGB", (200, 40, 10)),
        ("RGBA", (200, 40, 10)),
        ("L", (84, 84, 84)),  # ITU-R 601 luma of (200, 40, 10)
        ("LA", (84, 84, 84)),
        ("P", (200, 40, 10)),  # the web palette holds nothing near it, PIL's adaptive conversion keeps it
        ("CMYK", (200, 40, 10)),
        ("1", (0, 0, 0)),  # luma 84 is under the bilevel cut
    ],
)
def test_any_mode_becomes_rgb_of_the_same_size_and_colour(mode: str, expected: tuple[int, int, int]) -> None:
    source = Image.new("RGB", (37, 21), (200, 40, 10))
    if mode == "P":
        image = source.convert(mode, palette=Image.Palette.ADAPTIVE)
    elif mode == "1":
        image = source.convert(mode, dither=Image.Dither.NONE)
    else:
        image = source.convert(mode)
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (37, 21)
    pixels = np.asarray(converted).reshape(-1, 3)
    assert (pixels == pixels[0]).all() and tuple(int(v) for v in pixels[0]) == expected


@pytest.mark.parametrize(
    ("mode", "value", "grey"),
    [
        ("I;16", 40000, 156),  # 40000 / 257
        ("I;16", 0, 0),
        ("I;16", 65535, 255),
        ("I;16B", 1000, 4),
        ("I", 40000, 156),  # a 16-bit PNG opens as "I": read at 16 bits
        ("I", 200, 200),  # values that fit 8 bits are 8-bit values
        ("I", -5, 0),
        ("F", 0.5, 128),
        ("F", 1.7, 255),  # clipped to [0, 1]
        ("F", -0.2, 0),
    ],
)
def test_flat_high_bit_depth_greyscale_keeps_its_grey(mode: str, value: float, grey: int) -> None:
    rgb = np.asarray(to_rgb(Image.new(mode, (4, 4), value)))
    assert rgb.shape == (4, 4, 3) and (rgb == grey).all()


def test_sixteen_bit_greyscale_keeps_its_levels_not_its_own_range() -> None:
    dim = np.linspace(0, 8000, 64 * 8).astype(np.uint16).reshape(8, 64)  # a dim photo: the top eighth unused
    rgb = np.asarray(to_rgb(Image.fromarray(dim)))
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == round(8000 / 257)
    np.testing.assert_array_equal(rgb[..., 0], np.round(dim / 257).astype(np.uint8))
    full = np.linspace(0, 65535, 64 * 8).astype(np.uint16).reshape(8, 64)
    assert np.asarray(to_rgb(Image.fromarray(full)))[..., 0].max() == 255


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.info["exif"] = exif.tobytes()
    image = Image.open(_roundtrip_jpeg(image, exif))
    assert to_rgb(image).size == (20, 40)


def _roundtrip_jpeg(image: Image.Image, exif: Image.Exif):  # type: ignore[no-untyped-def]
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    buffer.seek(0)
    return buffer


def test_working_size_keeps_aspect_and_long_side() -> None:
    assert working_size(1024, 768, 224, 32) == (224, 168)
    assert working_size(550, 825, 224, 32) == (149, 224)
    assert working_size(100, 50, 320, 32) == (320, 160)  # small photos are enlarged to the working size
    assert working_size(5000, 1, 224, 32) == (224, 32)  # a thin strip still fills one cell of the coarsest level
    assert working_size(5000, 1, 224, 16) == (224, 16)


def test_scaled_size_shrinks_only_unless_asked_to_enlarge() -> None:
    assert scaled_size(1024, 768, 512) == (512, 384)
    assert scaled_size(300, 200, 512) == (300, 200)
    assert scaled_size(300, 200, 600, enlarge=True) == (600, 400)
    assert scaled_size(10000, 1, 100) == (100, 1)


def test_person_probability_is_the_softmax_of_the_person_class() -> None:
    logits = torch.tensor([[[[0.0, 2.0]], [[0.0, -1.0]]]])  # (1, 2 classes, 1, 2)
    expected = torch.tensor([[[0.5, 1 / (1 + np.exp(3.0))]]], dtype=torch.float32)
    torch.testing.assert_close(person_probability(logits), expected)


def test_pad_to_multiple_pads_bottom_right_only() -> None:
    array = np.ones((33, 64, 3), dtype=np.float32)
    padded = pad_to_multiple(array, 32)
    assert padded.shape == (64, 64, 3)
    assert padded[:33].min() == 1 and padded[33:].max() == 0


def test_normalize_uses_the_given_statistics() -> None:
    pixels = np.full((2, 2, 3), 255, dtype=np.uint8)
    out = normalize(pixels, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    assert out.shape == (3, 2, 2)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 2.0, 1.0])


def test_prepare_batch_pads_to_the_multiple_and_reports_valid_regions() -> None:
    images = [Image.new("RGB", (300, 200)), Image.new("RGB", (100, 400))]
    batch, valid = prepare_batch(images, long_side=128, multiple=32, mean=(0, 0, 0), std=(1, 1, 1))
    assert batch.shape[0] == 2 and batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0
    assert valid == [(128, 85), (32, 128)]


def test_unpad_and_resize_crops_then_scales_back() -> None:
    probability = torch.zeros(64, 64)
    probability[:32, :48] = 1.0  # valid region fully "person", padding zero
    out = unpad_and_resize(probability, (48, 32), (480, 320))
    assert out.shape == (320, 480) and out.dtype == np.float32
    assert out.min() == pytest.approx(1.0)
