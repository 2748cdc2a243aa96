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
    "prepare_batch",
    "probability_to_mask",
    "to_rgb",
    "unpad_and_resize",
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
        # Scale high-bit-depth greyscale by its own range; PIL's convert("L") would clip at 255.
        values = np.asarray(image, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
        image = Image.fromarray(scaled.round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def probability_to_mask(probability: torch.Tensor, valid: tuple[int, int], size: tuple[int, int]) -> Image.Image:
    """Crop a (H, W) probability map to its valid region and upsample it to ``size`` as an 8-bit 'L' mask.

    Quantising before the bilinear upsampling keeps memory at one byte per output pixel, which is what
    bounds peak memory on tens-of-megapixel photos; the error is under 1/255.
    """
    width, height = valid
    cropped = probability[:height, :width].float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    small = Image.fromarray(cropped.cpu().numpy())
    return small if small.size == size else small.resize(size, Image.Resampling.BILINEAR)


def working_size(width: int, height: int, long_side: int, multiple: int) -> tuple[int, int]:
    """Size (w, h) that the image is resized to: its long side becomes ``long_side``, aspect kept.

    Both sides are at least ``multiple`` pixels so that very thin images still pass the network.
    """
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


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


def unpad_and_resize(probability: torch.Tensor, valid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Crop a (H, W) probability map to its valid region and resize it bilinearly to ``size`` (w, h).

    Returns float32 values in [0, 1].
    """
    import torch.nn.functional as F

    width, height = valid
    cropped = probability[:height, :width][None, None].float()
    resized = F.interpolate(cropped, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return resized[0, 0].clamp_(0.0, 1.0).cpu().numpy()
