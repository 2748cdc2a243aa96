"""Remove the background from photos of people with a Tiramisu (FC-DenseNet) network.

Example:
    >>> from bgremove_plugin import remove_background
    >>> cutout = remove_background("portrait.jpg")  # doctest: +SKIP
    >>> cutout.mode, cutout.size  # doctest: +SKIP
    ('RGBA', (1024, 768))

Importing the package is cheap: torch and the model load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BackendUnavailableError,
    BgRemoveError,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidImageError,
    InvalidVideoError,
    ModelLoadError,
)

if TYPE_CHECKING:
    from .api import BackgroundRemover, remove_background
    from .hub import load_model
    from .model import TiramisuNet
    from .video import remove_background_video

__version__ = "0.1.0"
__all__ = [
    "BackendUnavailableError",
    "BackgroundRemover",
    "BgRemoveError",
    "DeviceUnavailableError",
    "InvalidArgumentError",
    "InvalidImageError",
    "InvalidVideoError",
    "ModelLoadError",
    "TiramisuNet",
    "__version__",
    "load_model",
    "remove_background",
    "remove_background_video",
]

_LAZY = {
    "remove_background": "api",
    "BackgroundRemover": "api",
    "load_model": "hub",
    "TiramisuNet": "model",
    "remove_background_video": "video",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'bgremove_plugin' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
