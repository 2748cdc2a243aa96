"""``refine="matting"``: solve for alpha in a band around the person's outline with closed-form matting.

The segmentation decides what is surely person and surely background; only a band around its outline
is left unknown (a trimap), and there the closed-form matting of Levin, Lischinski and Weiss (2008),
as implemented by pymatting (extra ``bgremove_plugin[matting]``), finds the alpha that best explains the
photo's colours as a local mix of a foreground and a background colour. That recovers soft, partial
transitions (hair, thin cloth, motion blur) that a segmentation network at a few hundred pixels cannot.
It costs about a second per photo, so it is opt-in.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from .errors import BackendUnavailableError
from .refine import box_mean, guided_upsample
from .transforms import scaled_size

__all__ = ["MATTING_LONG_SIDE", "matte", "require_pymatting", "trimap_from_probability"]

log = logging.getLogger(__name__)

MATTING_LONG_SIDE = 512
"""Resolution (long side) of the matting solve; the result is brought to full size with the guided filter."""
BAND_FRACTION = 0.03
"""Half-width of the unknown band as a share of the person's size (square root of their area)."""
BAND_LIMITS = (2, 12)
"""Smallest and largest half-width of the unknown band, in pixels at the matting resolution."""


def _quiet(factorize: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """pymatting's incomplete Cholesky prints a "PERFORMANCE WARNING" to stdout each time it retries with a
    larger diagonal shift, which the matting Laplacian often needs; a library must not print, so the
    factorisation (a fraction of a second) runs with stdout captured and the text goes to the debug log.
    (The Jacobi preconditioner, which never prints, made the solve 2.7x slower.)"""

    def run(matrix: Any) -> Any:
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            result = factorize(matrix)
        if captured.getvalue():
            log.debug("pymatting: %s", captured.getvalue().strip())
        return result

    return run


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2r+1)^2 square: a pixel stays only if its whole window is inside ``mask``."""
    return box_mean(mask.astype(np.float32), radius, dtype=np.float32) > 1.0 - 1e-4


def trimap_from_probability(probability: np.ndarray) -> np.ndarray:
    """Trimap (1 person, 0 background, 0.5 unknown) around the 0.5 outline of ``probability``.

    The band's half-width scales with the person's size, so a close-up portrait gets a wider band than
    a small figure in a landscape, and is clamped to ``BAND_LIMITS``.
    """
    person = probability >= 0.5
    size = float(np.sqrt(person.sum()))
    radius = int(np.clip(round(BAND_FRACTION * size), *BAND_LIMITS))
    trimap = np.full(probability.shape, 0.5, dtype=np.float64)
    trimap[_erode(person, radius)] = 1.0
    trimap[_erode(~person, radius)] = 0.0
    return trimap


def require_pymatting() -> None:
    """Raise ``BackendUnavailableError`` with the install command when pymatting cannot be imported."""
    import importlib.util

    try:
        found = importlib.util.find_spec("pymatting") is not None
    except ValueError:  # an entry without a spec (e.g. blocked in sys.modules) cannot be imported either
        found = False
    if not found:
        raise BackendUnavailableError("refine='matting' needs pymatting: pip install 'bgremove_plugin[matting]'")


def matte(probability: np.ndarray, image: Image.Image) -> Image.Image:
    """Full-resolution 8-bit 'L' alpha for ``image`` from the network's (h, w) person probability.

    Raises:
        BackendUnavailableError: pymatting (the ``[matting]`` extra) is not installed.
    """
    require_pymatting()
    from pymatting import estimate_alpha_cf, ichol  # type: ignore[import-untyped,unused-ignore]

    rgb = image.convert("RGB")
    width, height = rgb.size
    work_size = scaled_size(width, height, MATTING_LONG_SIDE)
    small = rgb.resize(work_size, Image.Resampling.BOX)
    work_probability = np.asarray(
        Image.fromarray(probability.astype(np.float32), mode="F").resize(work_size, Image.Resampling.BILINEAR)
    )
    trimap = trimap_from_probability(work_probability)
    unknown = trimap == 0.5
    if unknown.all() or not unknown.any() or not (trimap == 1.0).any() or not (trimap == 0.0).any():
        # Nothing to solve (no person, or no background, or too small to have a sure part).
        return guided_upsample(work_probability, rgb)
    alpha = np.clip(
        estimate_alpha_cf(np.asarray(small, dtype=np.float64) / 255.0, trimap, preconditioner=_quiet(ichol)), 0.0, 1.0
    )
    if work_size == (width, height):
        return Image.fromarray(np.round(alpha * 255.0).astype(np.uint8), mode="L")
    # Bring the solved alpha to full size along the full-resolution photo's edges, at the solve's detail.
    return guided_upsample(alpha.astype(np.float32), rgb, radius=2, guide_long_side=MATTING_LONG_SIDE)
