"""Typed errors: each says what was wrong and how to fix it."""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BgRemoveError",
    "DeviceUnavailableError",
    "InvalidArgumentError",
    "InvalidImageError",
    "InvalidVideoError",
    "ModelLoadError",
]


class BgRemoveError(Exception):
    """Base class of every error bgremove_plugin raises on purpose."""


class InvalidImageError(BgRemoveError, ValueError):
    """The input is not an image the package can read (wrong type, unreadable bytes, zero size)."""


class InvalidVideoError(BgRemoveError, ValueError):
    """The source is not a video the package can read, or holds no video stream or frames."""


class InvalidArgumentError(BgRemoveError, ValueError):
    """An option has a value outside what it accepts (``threshold=2.0``, ``refine="bogus"``, an unknown
    colour or backend); the message names the accepted values."""


class ModelLoadError(BgRemoveError, OSError):
    """Weights could not be found, downloaded or matched to their config."""


class DeviceUnavailableError(BgRemoveError, RuntimeError):
    """An explicitly requested device (``cuda``, ``mps``) is not available in this process."""


class BackendUnavailableError(BgRemoveError, RuntimeError):
    """An explicitly requested optional engine cannot run: ``backend="onnx"`` without onnxruntime, or
    ``refine="matting"`` without pymatting (their extras are not installed)."""
