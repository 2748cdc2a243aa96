from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bgremove_plugin.transforms import normalize, pad_to_multiple, prepare_batch, to_rgb, unpad_and_resize, working_size


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_any_mode_becomes_rgb_of_the_same_size(mode: str) -> None:
    image = Image.new("RGB", (37, 21), (200, 40, 10)).convert(mode)
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (37, 21)


def test_sixteen_bit_greyscale_keeps_its_contrast() -> None:
    ramp = np.linspace(0, 65535, 64 * 8, dtype=np.uint16).reshape(8, 64)
    rgb = np.asarray(to_rgb(Image.fromarray(ramp)))
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255


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
    assert working_size(5000, 1, 224, 32) == (224, 1)


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
