"""The public entry points: ``remove_background`` and the reusable ``BackgroundRemover``."""

from __future__ import annotations

import copy
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from PIL import Image, ImageChops, ImageColor, ImageOps, UnidentifiedImageError

from .errors import BackendUnavailableError, InvalidArgumentError, InvalidImageError
from .hub import load_model, onnx_folder, resolve_device
from .matting import matte, require_pymatting
from .model import TiramisuNet
from .onnx_backend import Backend, OnnxNet, onnx_for, onnx_provider
from .precision import Precision, check_precision, cpu_has_bfloat16, resolve_precision
from .refine import Refine, check_refine, estimate_foreground, guided_upsample
from .transforms import oriented, person_probability, prepare_batch, probability_to_mask, to_rgb, valid_region

if TYPE_CHECKING:
    from typing import TypeAlias

__all__ = ["BackgroundRemover", "ImageInput", "load_image", "remove_background"]

log = logging.getLogger(__name__)

ImageInput: TypeAlias = Union[Image.Image, np.ndarray, str, os.PathLike, bytes]  # noqa: UP007
BackgroundInput: TypeAlias = Union[str, tuple[int, int, int], Image.Image]  # noqa: UP007

_ACCEPTED = "a PIL image, a numpy array (HxW, HxWx3 or HxWx4; uint8, or float in [0, 1]), a file path or encoded bytes"


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.size == 0:
        raise InvalidImageError(f"got an empty numpy array of shape {array.shape}; expected {_ACCEPTED}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InvalidImageError(f"got a numpy array of shape {array.shape}; expected HxW, HxWx3 or HxWx4")
    if array.dtype == np.uint8:
        data = array
    elif np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        values = array.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise InvalidImageError("a float numpy image must hold finite values in [0, 1]; scale it or pass uint8")
        data = (values * 255.0).round().astype(np.uint8)
    else:
        raise InvalidImageError(f"numpy images must be uint8 or float in [0, 1], got dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(data))


def _too_large(exc: Image.DecompressionBombError) -> InvalidImageError:
    # Pillow refuses images over twice MAX_IMAGE_PIXELS (and only warns between one and two times it).
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return InvalidImageError(
        f"the image is over Pillow's decompression-bomb limit of {limit:,} pixels ({exc}); downscale it "
        "first, or raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted"
    )


def load_image(image: ImageInput) -> Image.Image:
    """Turn any accepted input into a PIL image with its EXIF orientation applied.

    Raises:
        InvalidImageError: unsupported type, unreadable data, a zero-size image or one over Pillow's
            decompression-bomb limit.
    """
    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, np.ndarray):
        pil = _array_to_image(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise InvalidImageError("got empty bytes; expected an encoded image (PNG, JPEG, WebP, ...)")
        try:
            pil = Image.open(io.BytesIO(bytes(image)))
            pil.load()
        except Image.DecompressionBombError as exc:
            raise _too_large(exc) from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InvalidImageError(f"the {len(image)} bytes given are not a readable image: {exc}") from exc
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InvalidImageError(f"no image file at {str(path)!r}")
        try:
            with Image.open(path) as opened:
                opened.load()
                pil = opened
        except Image.DecompressionBombError as exc:
            raise _too_large(exc) from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InvalidImageError(f"{str(path)!r} is not a readable image: {exc}") from exc
    else:
        raise InvalidImageError(f"got {type(image).__name__}; expected {_ACCEPTED}")
    if pil.width == 0 or pil.height == 0:
        raise InvalidImageError(f"the image has zero size ({pil.width}x{pil.height})")
    return oriented(pil)


def _mask_image(mask: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(mask, Image.Image):
        return mask if mask.mode == "L" else mask.convert("L")
    if isinstance(mask, np.ndarray) and mask.ndim == 2:
        return _array_to_image(mask)
    shape = f" of shape {mask.shape}" if isinstance(mask, np.ndarray) else ""
    raise InvalidImageError(f"got a {type(mask).__name__}{shape} as mask; expected an 'L' PIL image or a 2-D array")


def _parse_colour(colour: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(colour, str):
        try:
            rgb = ImageColor.getrgb(colour)
        except ValueError as exc:
            raise InvalidArgumentError(
                f"background={colour!r} is not a colour name or hex code such as 'white' or '#00ff00'"
            ) from exc
        return rgb[0], rgb[1], rgb[2]
    if len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
        return colour[0], colour[1], colour[2]
    raise InvalidArgumentError(
        f"background={colour!r} must be a colour name, a hex code, an (r, g, b) tuple of 0-255 ints or an image"
    )


def compose(
    image: Image.Image,
    mask: Image.Image,
    *,
    background: BackgroundInput | None = None,
    return_mask: bool = False,
    threshold: float | None = None,
    decontaminate: bool = False,
) -> Image.Image:
    """Turn an oriented image and its 'L' person mask into the requested output."""
    if threshold is not None:
        if not 0.0 < threshold < 1.0:
            raise InvalidArgumentError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
        cut = round(threshold * 255)
        mask = mask.point(lambda value: 255 if value >= cut else 0)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Pixels that were already transparent stay transparent.
        mask = ImageChops.multiply(mask, image.convert("RGBA").getchannel("A"))
    if return_mask:
        return mask
    rgb = to_rgb(image)
    if decontaminate and threshold is None:
        rgb = estimate_foreground(rgb, mask)
    if background is None:
        cutout = rgb.copy() if rgb is image else rgb  # never write alpha into the caller's image
        cutout.putalpha(mask)
        return cutout
    if isinstance(background, Image.Image):
        backdrop = ImageOps.fit(to_rgb(background), rgb.size, Image.Resampling.LANCZOS)
    else:
        backdrop = Image.new("RGB", rgb.size, _parse_colour(background))
    return Image.composite(rgb, backdrop, mask)


class BackgroundRemover:
    """One loaded model, reusable and safe to share between threads.

    Args:
        model: ``None`` (embedded default weights), a local weights folder, a Hub repo id, or a
            ``TiramisuNet`` instance.
        revision: Hub revision when ``model`` is a repo id.
        device: ``"auto"`` (default: CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"`` or ``"mps"``.
        batch_size: images per forward pass when a list is processed. 1 by default: on CPUs the
            memory-bound network ran slower per image in batches of 4 (209-234 vs 142-151 ms); raise
            it on a GPU.
        refine: the default edge refinement, ``"guided"``, ``"none"`` or ``"matting"``; each call may
            override it.
        backend: ``"auto"`` (default), ``"torch"`` or ``"onnx"`` (ONNX Runtime; needs the ``[onnx]``
            extra, else raises). ``"auto"`` is the fastest at hand: PyTorch in bfloat16 on a CPU with
            bfloat16 instructions; ONNX Runtime (if installed) for float32 on other CPUs; PyTorch on GPUs.
            The chosen one is in ``.backend``.
        precision: ``"auto"`` (default: bfloat16 on a CPU that computes it natively, else float32),
            ``"float32"`` or ``"bfloat16"`` (PyTorch only). The chosen one is in ``.precision``.

    Example:
        >>> remover = BackgroundRemover(device="cpu")
        >>> cutouts = remover.remove_many(["a.jpg", "b.jpg"])  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | Path | TiramisuNet | None = None,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 1,
        refine: Refine = "guided",
        backend: Backend = "auto",
        precision: Precision = "auto",
    ) -> None:
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be at least 1, got {batch_size}")
        if backend not in ("auto", "torch", "onnx"):
            raise InvalidArgumentError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
        self.refine = check_refine(refine)
        if self.refine == "matting":
            require_pymatting()
        self.device = resolve_device(device)
        self._device_chosen_automatically = device is None or str(device) == "auto"
        if isinstance(model, TiramisuNet):
            self.model = model.to(self.device).eval()
        else:
            self.model = load_model(model, revision=revision, device=self.device)
        self.batch_size = batch_size
        check_precision(precision, onnx=backend == "onnx")  # before any export
        self._onnx = self._onnx_runner(backend, precision, model, revision)
        self.backend: Backend = "onnx" if self._onnx is not None else "torch"
        self.precision = resolve_precision(precision, self.device, onnx=self._onnx is not None)
        if self.backend == "torch" and self.device.type == "cpu":
            # Measured on 2 cores at 224x192: 185-243 ms contiguous, 138-143 ms channels_last (same outputs).
            # On a private copy: Module.to works in place, and load_model's cached network is shared with
            # other removers (an ONNX export traced from channels_last weights gains stride guards).
            self.model = copy.deepcopy(self.model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @property
    def provider(self) -> str | None:
        """The ONNX Runtime execution provider running the network (``backend="onnx"``), else None."""
        return self._onnx.provider if self._onnx is not None else None

    def __repr__(self) -> str:
        engine = f"onnx on {self.provider}" if self._onnx is not None else "torch"
        return (
            f"BackgroundRemover(input_size={self.model.input_size}, device={self.device}, backend={engine}, "
            f"precision={self.precision})"
        )

    def _onnx_runner(
        self, backend: Backend, precision: Precision, model: str | Path | TiramisuNet | None, revision: str | None
    ) -> OnnxNet | None:
        if backend == "torch":
            return None
        if backend == "auto":
            # Measured end to end per 1024x768 photo on 2 cores (benchmarks/speed.py): PyTorch in bfloat16 185 ms,
            # ONNX Runtime in float32 364 ms, PyTorch in float32 409 ms. So ONNX Runtime only where float32 is
            # what runs, on the CPU, and only if it is installed; else PyTorch, which needs no extra.
            float32 = precision == "float32" or (precision == "auto" and not cpu_has_bfloat16())
            if self.device.type != "cpu" or not float32:
                return None
        try:
            provider = onnx_provider(self.device, fall_back=self._device_chosen_automatically)
            weights_dir = None if isinstance(model, TiramisuNet) else onnx_folder(model, revision)
            return onnx_for(self.model, weights_dir=weights_dir, provider=provider)
        except BackendUnavailableError as exc:
            if backend == "onnx":
                raise
            log.debug("backend 'auto' runs PyTorch: %s", exc)
            return None

    def predict_masks(self, images: Sequence[ImageInput], *, refine: Refine | None = None) -> list[Image.Image]:
        """Person probability as 8-bit 'L' masks (255 = person) at each image's oriented size."""
        return self._masks_of([load_image(image) for image in images], refine)

    @torch.inference_mode()
    def _masks_of(self, loaded: Sequence[Image.Image], refine: Refine | None = None) -> list[Image.Image]:
        mode = self.refine if refine is None else check_refine(refine)
        if mode == "matting":
            require_pymatting()  # before any work, not after the first forward pass
        net = self.model
        masks: list[Image.Image] = []
        for start in range(0, len(loaded), self.batch_size):
            chunk = loaded[start : start + self.batch_size]
            rgb = [to_rgb(image) for image in chunk]
            batch, valid = prepare_batch(
                rgb, long_side=net.input_size, multiple=net.pad_multiple, mean=net.mean, std=net.std
            )
            probabilities = net.probability_to_alpha(self._person_probability(batch))
            for i, photo in enumerate(rgb):
                if mode == "guided":
                    masks.append(guided_upsample(valid_region(probabilities[i], valid[i]).cpu().numpy(), photo))
                elif mode == "matting":
                    masks.append(matte(valid_region(probabilities[i], valid[i]).cpu().numpy(), photo))
                else:
                    masks.append(probability_to_mask(probabilities[i], valid[i], photo.size))
        return masks

    def _person_probability(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, H, W) person probability of a normalised, padded batch, from whichever backend is active."""
        if self._onnx is not None:
            return torch.from_numpy(self._onnx(batch.numpy()))
        if self.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            logits = self.model(batch.to(self.device))
        return person_probability(logits)

    def predict_alpha(self, images: Sequence[ImageInput], *, refine: Refine | None = None) -> list[np.ndarray]:
        """Person probability as float32 arrays in [0, 1] at each image's oriented size."""
        return [np.asarray(mask, dtype=np.float32) / 255.0 for mask in self.predict_masks(images, refine=refine)]

    def remove(
        self,
        image: ImageInput,
        *,
        background: BackgroundInput | None = None,
        return_mask: bool = False,
        threshold: float | None = None,
        refine: Refine | None = None,
        decontaminate: bool = False,
    ) -> Image.Image:
        """Cut the person out of one image; see :func:`remove_background` for the options."""
        return self.remove_many(
            [image],
            background=background,
            return_mask=return_mask,
            threshold=threshold,
            refine=refine,
            decontaminate=decontaminate,
        )[0]

    def remove_many(
        self,
        images: Sequence[ImageInput],
        *,
        background: BackgroundInput | None = None,
        return_mask: bool = False,
        threshold: float | None = None,
        refine: Refine | None = None,
        decontaminate: bool = False,
    ) -> list[Image.Image]:
        """Cut out a list of images, ``batch_size`` at a time; returns one output per input, in order."""
        loaded = [load_image(image) for image in images]
        masks = self._masks_of(loaded, refine)
        return [
            compose(
                image,
                mask,
                background=background,
                return_mask=return_mask,
                threshold=threshold,
                decontaminate=decontaminate,
            )
            for image, mask in zip(loaded, masks)
        ]

    def apply_mask(
        self,
        image: ImageInput,
        mask: Image.Image | np.ndarray,
        *,
        background: BackgroundInput | None = None,
        return_mask: bool = False,
        threshold: float | None = None,
        decontaminate: bool = False,
    ) -> Image.Image:
        """What :meth:`remove` returns, from a mask already predicted (or edited by hand) instead of a new
        forward pass: show the mask beside the cut-out, or try several backgrounds, for one pass's cost.

        Args:
            image: any accepted input; its EXIF orientation is applied, as in :meth:`predict_masks`.
            mask: an 'L' mask from :meth:`predict_masks` (255 = person) or a 2-D array from
                :meth:`predict_alpha` (float in [0, 1], or uint8), at the image's oriented size.
            background, return_mask, threshold, decontaminate: as in :func:`remove_background`.

        Raises:
            InvalidImageError: the image cannot be read, or the mask is not a 2-D mask of its size.
        """
        loaded = load_image(image)
        person = _mask_image(mask)
        if person.size != loaded.size:
            raise InvalidImageError(
                f"the mask is {person.width}x{person.height} but the image is {loaded.width}x{loaded.height} once "
                "its EXIF orientation is applied; predict the mask from the same image"
            )
        return compose(
            loaded, person, background=background, return_mask=return_mask, threshold=threshold, decontaminate=decontaminate
        )

    def __call__(self, image: ImageInput) -> Image.Image:
        return self.remove(image)


_default_removers: dict[tuple[str, str | None, str, str, str], BackgroundRemover] = {}


def remove_background(
    image: ImageInput,
    *,
    model: str | Path | TiramisuNet | None = None,
    revision: str | None = None,
    device: str | torch.device | None = None,
    background: BackgroundInput | None = None,
    return_mask: bool = False,
    threshold: float | None = None,
    refine: Refine = "guided",
    decontaminate: bool = False,
    backend: Backend = "auto",
    precision: Precision = "auto",
) -> Image.Image:
    """Remove the background from a photo of people.

    Args:
        image: PIL image (any mode; EXIF orientation applied), numpy array, file path or bytes.
        model: ``None`` for the weights inside the package, a local weights folder, a Hub repo id or
            a ``TiramisuNet``.
        revision: Hub revision when ``model`` is a repo id.
        device: ``"auto"`` (default), ``"cpu"``, ``"cuda"`` or ``"mps"``; unavailable ones raise.
        background: a colour (name, hex, RGB tuple) or an image to put behind the person; gives RGB.
        return_mask: return the 'L' alpha mask instead of a cut-out.
        threshold: binarise the mask at this probability instead of keeping soft edges.
        refine: how the network's low-resolution map becomes a full-resolution alpha: ``"guided"``
            (default; a guided filter makes edges follow the photo's colours), ``"none"`` (bilinear) or
            ``"matting"`` (closed-form matting in a band around the outline; about a second per photo;
            needs ``bgremove_plugin[matting]``).
        decontaminate: where alpha is partial, replace the photo's colours by the person's own
            estimated colours, so no tint of the old background (halo) shows on a new one. Off by
            default: it costs about as much as inference (about 130 ms per 1024x768 photo on 2 cores).
        backend: ``"auto"`` (the fastest at hand, see :class:`BackgroundRemover`), ``"torch"`` or
            ``"onnx"`` (ONNX Runtime; needs ``bgremove_plugin[onnx]``).
        precision: ``"auto"`` (bfloat16 on CPUs that compute it natively, else float32), ``"float32"``
            or ``"bfloat16"``.

    Returns:
        A PIL image of the input's oriented size: RGBA by default, RGB with ``background``, L with
        ``return_mask``.

    Raises:
        InvalidImageError: the input is not a readable image.
        BackendUnavailableError: ``backend="onnx"`` without the ``[onnx]`` extra or off the CPU, or
            ``refine="matting"`` without the ``[matting]`` extra.

    Example:
        >>> from bgremove_plugin import remove_background
        >>> cutout = remove_background("portrait.jpg")  # doctest: +SKIP
        >>> cutout.save("portrait.png")  # doctest: +SKIP
    """
    if isinstance(model, TiramisuNet):
        remover = BackgroundRemover(model, device=device, backend=backend, precision=precision)
    else:
        key = (str(model) if model is not None else "<default>", revision, str(resolve_device(device)), backend, precision)
        cached = _default_removers.get(key)
        # load_model caches the network itself, so a race here only builds a second thin wrapper.
        remover = (
            cached
            if cached is not None
            else _default_removers.setdefault(
                key, BackgroundRemover(model, revision=revision, device=device, backend=backend, precision=precision)
            )
        )
    return remover.remove(
        image,
        background=background,
        return_mask=return_mask,
        threshold=threshold,
        refine=refine,
        decontaminate=decontaminate,
    )
