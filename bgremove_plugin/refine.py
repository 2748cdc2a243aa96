"""From the network's low-resolution probability to a full-resolution alpha that follows the photo's edges.

The network sees the photo at a few hundred pixels; plain bilinear upsampling then blurs every outline
over several photo pixels. The guided filter (He, Sun and Tang) fits, in every small window, alpha as a
linear function of the photo's colour (R, G, B), so edges in the alpha land where the photo has them,
including edges between colours of equal brightness. The "fast" variant (He and Sun 2015) fits at a
reduced guide resolution and only evaluates the linear model at full resolution, row block by row block,
so memory stays bounded on very large photos.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

from .errors import InvalidArgumentError
from .transforms import scaled_size

Refine = Literal["none", "guided", "matting"]
REFINE_MODES: tuple[str, ...] = ("none", "guided", "matting")

# Chosen on 40 CCP validation photos with the epoch-33 weights (boundary F at 3 px; bilinear 0.576):
# a luminance guide peaked at 0.615 (any radius 2-4, eps 1e-4 to 3e-3, guide 320 or 512); the colour
# guide reached 0.634 at radius 4, eps 1e-3, guide 320 (radius 2: 0.620, 3: 0.630, 5-6: 0.632-0.635).
GUIDE_LONG_SIDE = 320
"""Resolution at which the guided filter's coefficients are fitted (the photo's long side)."""
GUIDED_RADIUS = 4
"""Window radius at the guide resolution: about 2.5% of the long side."""
GUIDED_EPS = 1e-3
"""Regularisation: lower follows weaker photo edges; higher stays closer to the network's map."""
_ROWS_PER_BLOCK = 256


def check_refine(refine: str) -> Refine:
    if refine not in REFINE_MODES:
        raise InvalidArgumentError(f"refine={refine!r} is not one of {', '.join(map(repr, REFINE_MODES))}")
    return refine  # type: ignore[return-value]


def _window_sums(values: np.ndarray, radius: int, axis: int, dtype: type[np.floating]) -> np.ndarray:
    """Sums over [i - r, i + r] along ``axis``, the window clipped at the border (zero padding)."""
    padding = [(0, 0)] * values.ndim
    padding[axis] = (radius + 1, radius)
    running = np.cumsum(np.pad(values, padding), axis=axis, dtype=dtype)
    n = values.shape[axis]
    upper = [slice(None)] * values.ndim
    lower = [slice(None)] * values.ndim
    upper[axis] = slice(2 * radius + 1, 2 * radius + 1 + n)
    lower[axis] = slice(0, n)
    return running[tuple(upper)] - running[tuple(lower)]


def _window_counts(n: int, radius: int) -> np.ndarray:
    index = np.arange(n)
    return np.minimum(index + radius + 1, n) - np.maximum(index - radius, 0)


def box_mean(values: np.ndarray, radius: int, *, dtype: type[np.floating] = np.float64) -> np.ndarray:
    """Mean over the (2r+1)^2 window around every pixel, the window clipped at the image border.

    ``values`` is (H, W) or (H, W, C) (channels filtered independently). Running sums are separable and
    use slices, not gathers; ``dtype`` is the accumulator: float64 where differences of means matter
    (the guided filter's variances), float32 (about 1e-5 off, three times faster) for smooth colour maps.
    """
    height, width = values.shape[:2]
    sums = _window_sums(_window_sums(values, radius, 0, dtype), radius, 1, dtype)
    count = np.outer(_window_counts(height, radius), _window_counts(width, radius)).astype(dtype)
    if values.ndim == 3:
        count = count[..., None]
    return (sums / count).astype(np.float32)


def _block_of(maps: list[Image.Image], size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """The part ``box`` of low-resolution float maps, bilinearly resized to ``size``, stacked on the last axis."""
    return np.stack(
        [np.asarray(m.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.float32) for m in maps], -1
    )


def _resize_float(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def guided_upsample(
    probability: np.ndarray,
    image: Image.Image,
    *,
    radius: int = GUIDED_RADIUS,
    eps: float = GUIDED_EPS,
    guide_long_side: int = GUIDE_LONG_SIDE,
) -> Image.Image:
    """Upsample a (h, w) probability in [0, 1] to ``image``'s size as an 8-bit 'L' alpha, guided by ``image``.

    Args:
        probability: the network's person probability for the whole photo, any resolution.
        image: the photo (any mode; its RGB colours are the guide), at the output size.
        radius, eps: the guided filter's window radius (in guide pixels) and regularisation.
        guide_long_side: the resolution at which the filter is fitted.
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    guide_size = scaled_size(width, height, guide_long_side)
    small = rgb.resize(guide_size, Image.Resampling.BOX)
    guide = [np.asarray(band, dtype=np.float32) / 255.0 for band in small.split()]  # R, G, B planes
    target = np.clip(_resize_float(probability, guide_size), 0.0, 1.0)

    # Per window: slope = (covariance of the colours + eps I)^-1 (covariance of colours and target).
    # 2-D planes filter faster than channel-last stacks; float32 running sums are accurate to about
    # 1e-6 here, far below eps, and three times faster than float64.
    def mean(values: np.ndarray) -> np.ndarray:
        return box_mean(values, radius, dtype=np.float32)

    mean_guide = [mean(plane) for plane in guide]
    mean_target = mean(target)
    cross = [mean(plane * target) - m * mean_target for plane, m in zip(guide, mean_guide)]
    rr, rg, rb, gg, gb, bb = (
        mean(guide[i] * guide[j]) - mean_guide[i] * mean_guide[j] + (eps if i == j else 0.0)
        for i, j in [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    )
    slope = _solve_symmetric_3x3((rr, rg, rb, gg, gb, bb), (cross[0], cross[1], cross[2]))
    offset = mean_target - sum(m * g for m, g in zip(slope, mean_guide))
    coefficient_maps = [Image.fromarray(mean(m), mode="F") for m in (*slope, offset)]

    # Evaluate alpha = slope . colour + offset at full resolution a block of rows at a time: the
    # coefficient maps are resized per block (PIL's box argument), so no full-size float array exists.
    alpha = np.empty((height, width), dtype=np.uint8)
    row_scale = guide_size[1] / height
    for top in range(0, height, _ROWS_PER_BLOCK):
        bottom = min(height, top + _ROWS_PER_BLOCK)
        box = (0.0, top * row_scale, float(guide_size[0]), bottom * row_scale)
        size = (width, bottom - top)
        red, green, blue, constant = (
            np.asarray(m.resize(size, Image.Resampling.BILINEAR, box=box)) for m in coefficient_maps
        )
        planes = [np.asarray(band, dtype=np.float32) for band in rgb.crop((0, top, width, bottom)).split()]
        block = red * planes[0] + green * planes[1] + blue * planes[2]  # colours still in 0..255
        block += constant * 255.0
        alpha[top:bottom] = np.clip(block + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(alpha, mode="L")


def _solve_symmetric_3x3(
    matrix: tuple[np.ndarray, ...], rhs: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve A x = b per pixel for symmetric positive definite A = (a, b, c, d, e, f) meaning
    [[a, b, c], [b, d, e], [c, e, f]], by the adjugate: several times faster than batched np.linalg.solve."""
    a, b, c, d, e, f = matrix
    co_a, co_b, co_c = d * f - e * e, c * e - b * f, b * e - c * d
    co_d, co_e, co_f = a * f - c * c, b * c - a * e, a * d - b * b
    inverse_det = 1.0 / (a * co_a + b * co_b + c * co_c)
    x, y, z = rhs
    return (
        (co_a * x + co_b * y + co_c * z) * inverse_det,
        (co_b * x + co_d * y + co_e * z) * inverse_det,
        (co_c * x + co_e * y + co_f * z) * inverse_det,
    )


FOREGROUND_LONG_SIDE = 512
"""Resolution of the smooth foreground/background colour estimates (the photo's long side)."""
_FOREGROUND_RADII = (90, 6)
"""Box radii, at that resolution, of the two blur-fusion passes (the paper's): wide to reach solid colour, then local.
On a 30 px red-on-green soft edge they cut the colour error from 55 to 5 (24, 3 left 23)."""


def estimate_foreground(image: Image.Image, alpha: Image.Image) -> Image.Image:
    """The person's own colours where alpha is partial, so edges carry no tint of the old background.

    A photo pixel at a soft edge is ``alpha * F + (1 - alpha) * B``; kept as is, the old background B
    shows as a halo on a new one. Blur fusion (Forte and Pitié, "Approximate fast foreground colour
    estimation", 2021) estimates smooth F and B maps from nearby pixels weighted by alpha, then corrects F
    so that it explains the pixel exactly. The smooth maps are computed at a reduced resolution and the
    correction at the partial-alpha pixels only. Pixels with alpha 0 or 1 are returned as is.

    Args:
        image: the RGB photo.
        alpha: its 'L' alpha at the same size.
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    result = np.array(rgb)  # a writable copy, one byte per channel
    alpha_full = np.asarray(alpha)
    rows, cols = np.nonzero((alpha_full > 0) & (alpha_full < 255))
    if rows.size == 0:
        return Image.fromarray(result, mode="RGB")
    # Blur fusion's wide pass only gathers colours from far away, so it runs at a quarter of the
    # resolution (radius scaled with it); the local pass and the correction keep the full detail.
    wide_radius, local_radius = _FOREGROUND_RADII
    small_size = scaled_size(width, height, FOREGROUND_LONG_SIDE)
    coarse_size = scaled_size(width, height, FOREGROUND_LONG_SIDE // 4)
    foreground = background = None
    for size, radius in ((coarse_size, max(1, wide_radius // 4)), (small_size, local_radius)):
        photo = np.asarray(rgb.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255.0
        weight = np.asarray(alpha.resize(size, Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0
        if foreground is None or background is None:
            foreground = background = photo
        else:
            foreground, background = (_resize_channels(m, size) for m in (foreground, background))
        # One pass over 7 channels: the alpha weight, then alpha-weighted F and (1 - alpha)-weighted B.
        means = box_mean(
            np.concatenate([weight, foreground * weight, background * (1.0 - weight)], axis=-1), radius, dtype=np.float32
        )
        blurred_f = means[..., 1:4] / np.maximum(means[..., :1], 1e-4)
        blurred_b = means[..., 4:7] / np.maximum(1.0 - means[..., :1], 1e-4)
        foreground = np.clip(blurred_f + weight * (photo - weight * blurred_f - (1 - weight) * blurred_b), 0.0, 1.0)
        background = blurred_b

    # The exact correction, F = F' + a (I - a F' - (1 - a) B'), is needed only where alpha is partial:
    # inside the rows and columns that hold such pixels, the smooth maps are resized (PIL, fast) and the
    # result is written back at the partial pixels alone.
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    scale_y, scale_x = small_size[1] / height, small_size[0] / width
    box = (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)
    maps = [Image.fromarray(np.ascontiguousarray(m[..., c]), mode="F") for m in (blurred_f, blurred_b) for c in range(3)]
    smooth = _block_of(maps, (int(right - left), int(bottom - top)), box)
    a = alpha_full[top:bottom, left:right, None].astype(np.float32) / 255.0
    pixel = result[top:bottom, left:right].astype(np.float32) / 255.0
    f, b = smooth[..., :3], smooth[..., 3:]
    corrected = np.clip(f + a * (pixel - a * f - (1 - a) * b), 0.0, 1.0)
    window = result[top:bottom, left:right]
    partial = (a[..., 0] > 0) & (a[..., 0] < 1)
    window[partial] = np.round(corrected[partial] * 255.0).astype(np.uint8)
    return Image.fromarray(result, mode="RGB")


def _resize_channels(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([_resize_float(maps[..., c], size) for c in range(maps.shape[-1])], axis=-1)
