"""Image <-> tensor conversions shared by inference and training, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "normalize",
    "oriented",
    "pad_to_multiple",
    "person_probability",
    "prepare_batch",
    "probability_to_mask",
    "scaled_size",
    "to_rgb",
    "unpad_and_resize",
    "valid_region",
    "working_size",
]

_ORIENTATION = 0x0112


def oriented(image: Image.Image) -> Image.Image:
    """The image as displayed: EXIF orientation applied.

    Returns ``image`` itself when it is already upright, so large photos are not copied for nothing.
    """
    if image.getexif().get(_ORIENTATION, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert any PIL mode to 8-bit RGB.

    Transparent pixels of RGBA/LA/P images keep their colour values: the network sees what is
    under the transparency, which for cut-outs is usually the original background.
    """
    image = oriented(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray(_greyscale_to_8_bit(image))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def _greyscale_to_8_bit(image: Image.Image) -> np.ndarray:
    """Map a high-bit-depth greyscale image to 8 bits by the range its mode stands for, never by its own
    minimum and maximum: a flat grey stays that grey and a dim photo stays dim. PIL's ``convert("L")``
    would clip 16-bit values at 255.

    16-bit modes divide by 257 (65535 -> 255). Float ("F") is taken as [0, 1] and clipped. 32-bit integer
    ("I", which PIL also uses for 16-bit PNGs) is read at the smallest depth that holds its largest value:
    8, 16 or 32 bits; negative values clip to 0.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scaled = np.clip(values, 0.0, 1.0) * 255.0
    elif image.mode.startswith("I;16"):
        scaled = values / 257.0
    else:
        peak = float(values.max(initial=0.0))
        full_scale = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else 2.0**31 - 1
        scaled = np.clip(values, 0.0, None) / full_scale * 255.0
    return np.asarray(np.round(scaled), dtype=np.uint8)


def person_probability(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) logits of the two classes -> (N, H, W) float32 probability of the person class."""
    return logits.float().softmax(dim=1)[:, 1]


def probability_to_mask(probability: torch.Tensor, valid: tuple[int, int], size: tuple[int, int]) -> Image.Image:
    """Crop a (H, W) probability map to its valid region and upsample it to ``size`` as an 8-bit 'L' mask.

    Quantising before the bilinear upsampling keeps memory at one byte per output pixel, which is what
    bounds peak memory on tens-of-megapixel photos; the error is under 1/255.
    """
    cropped = valid_region(probability, valid).float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    small = Image.fromarray(cropped.cpu().numpy())
    return small if small.size == size else small.resize(size, Image.Resampling.BILINEAR)


def scaled_size(width: int, height: int, long_side: int, *, enlarge: bool = False) -> tuple[int, int]:
    """(w, h) with the long side at ``long_side`` and the aspect kept, each side at least 1 pixel. Without
    ``enlarge`` an image already within ``long_side`` keeps its size."""
    scale = long_side / max(width, height)
    if not enlarge:
        scale = min(1.0, scale)
    return max(1, round(width * scale)), max(1, round(height * scale))


def working_size(width: int, height: int, long_side: int, multiple: int) -> tuple[int, int]:
    """Size (w, h) that the image is resized to for the network: its long side becomes ``long_side``
    (up or down), aspect kept, and each side at least ``multiple`` pixels, so that a very thin image still
    fills one cell of the network's coarsest level instead of being mostly padding."""
    scaled_width, scaled_height = scaled_size(width, height, long_side, enlarge=True)
    return max(multiple, scaled_width), max(multiple, scaled_height)


def pad_to_multiple(array: np.ndarray, multiple: int, value: float = 0.0) -> np.ndarray:
    """Pad an (H, W, ...) array at the bottom and right so H and W are multiples of ``multiple``."""
    height, width = array.shape[:2]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return array
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="constant", constant_values=value)


def normalize(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W), scaled to [0, 1] then standardised."""
    scaled = rgb.astype(np.float32) / 255.0
    scaled -= np.asarray(mean, dtype=np.float32)
    scaled /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))


def prepare_batch(
    images: Sequence[Image.Image],
    *,
    long_side: int,
    multiple: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resize RGB images to the working resolution and stack them into one padded batch.

    Padding is zero after normalisation (the mean colour), the same value training uses outside a
    crop. Returns the batch and each image's valid (width, height) inside it.
    """
    arrays = []
    valid = []
    for image in images:
        size = working_size(image.width, image.height, long_side, multiple)
        resized = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        arrays.append(normalize(np.asarray(resized), mean, std))
        valid.append(size)
    batch_h = max(h for _, h in valid)
    batch_w = max(w for w, _ in valid)
    batch_h += (-batch_h) % multiple
    batch_w += (-batch_w) % multiple
    batch = np.zeros((len(arrays), 3, batch_h, batch_w), dtype=np.float32)
    for i, array in enumerate(arrays):
        batch[i, :, : array.shape[1], : array.shape[2]] = array
    return torch.from_numpy(batch), valid


def valid_region(probability: torch.Tensor, valid: tuple[int, int]) -> torch.Tensor:
    """The part of a padded (H, W) map that covers the image: its top-left ``valid`` (width, height)."""
    width, height = valid
    return probability[:height, :width]


def unpad_and_resize(probability: torch.Tensor, valid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """:func:`probability_to_mask` as float32 values in [0, 1]: the same crop, quantisation and upsampling
    that inference applies, so that training measures what users get."""
    return np.asarray(probability_to_mask(probability, valid, size), dtype=np.float32) / 255.0
