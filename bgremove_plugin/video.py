"""Cut people out of video clips, frame by frame, with steadier edges (the ``[video]`` extra, PyAV).

Outputs by the destination's form: ``.webm`` VP9 with an alpha channel, ``.mov`` ProRes 4444 with alpha,
``.mp4`` H.264 composited on a background colour, or a folder of RGBA PNG frames. Frame rate, size and
frame count are kept and an audio track is carried over (re-encoded to the container's codec). Frames are
streamed: memory does not grow with the clip. The output appears only when it is complete.

Steadier edges: where the picture did not change since the previous frame, the person probability is
averaged with the previous frame's (``smoothing``), so a still outline does not shimmer; where it moved,
the new frame's probability is used as it is, so the cut-out does not lag behind the person.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter

from .errors import BackendUnavailableError, InvalidArgumentError, InvalidVideoError

if TYPE_CHECKING:
    from .api import BackgroundInput, BackgroundRemover
    from .refine import Refine

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".gif"})
"""Inputs the CLI treats as video."""
MOTION_LEVEL = 12.0
"""Change of a pixel's grey level (0-255, after a light blur) above which it counts as moving."""
_INSTALL_HINT = 'pip install "bgremove_plugin[video]"'


@dataclass(frozen=True)
class VideoResult:
    frames: int
    fps: float
    size: tuple[int, int]
    audio: bool
    destination: Path


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise BackendUnavailableError(f"video needs PyAV; {_INSTALL_HINT}") from exc
    return av


class TemporalSmoother:
    """Blend each frame's person probability with the previous result where the picture stood still."""

    def __init__(self, strength: float) -> None:
        if not 0.0 <= strength < 1.0:
            raise InvalidArgumentError(f"smoothing must be in [0, 1), got {strength}")
        self.strength = strength
        self._previous_grey: np.ndarray | None = None
        self._previous_alpha: np.ndarray | None = None

    def __call__(self, frame: Image.Image, alpha: np.ndarray) -> np.ndarray:
        grey = np.asarray(frame.convert("L").filter(ImageFilter.BoxBlur(2)), dtype=np.float32)
        result = alpha
        if self.strength > 0 and self._previous_grey is not None and self._previous_alpha is not None:
            still = np.abs(grey - self._previous_grey) < MOTION_LEVEL
            blended = self.strength * self._previous_alpha + (1.0 - self.strength) * alpha
            result = np.where(still, blended, alpha).astype(np.float32)
        self._previous_grey, self._previous_alpha = grey, result
        return result


def _output_kind(destination: Path, background: object) -> str:
    suffix = destination.suffix.lower()
    if suffix == ".webm":
        return "webm"
    if suffix == ".mov":
        return "mov"
    if suffix == ".mp4":
        if background is None:
            raise InvalidArgumentError("MP4 (H.264) has no transparency: pass background= (e.g. 'white'), or write .webm or .mov")
        return "mp4"
    if suffix == "":
        return "frames"
    raise InvalidArgumentError(f"{destination.name}: write .webm (VP9 + alpha), .mov (ProRes 4444), .mp4 (on a background) or a folder")


_VIDEO_CODECS = {"webm": ("libvpx-vp9", "yuva420p"), "mov": ("prores_ks", "yuva444p10le"), "mp4": ("libx264", "yuv420p")}
_AUDIO_CODECS = {"webm": "libopus", "mov": "aac", "mp4": "aac"}


def remove_background_video(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    background: BackgroundInput | None = None,
    threshold: float | None = None,
    refine: Refine | None = None,
    smoothing: float = 0.5,
    remover: BackgroundRemover | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> VideoResult:
    """Cut the people out of every frame of ``source`` and write ``destination`` (see the module's doc).

    ``background``, ``threshold`` and ``refine`` are :func:`remove_background`'s (``refine`` None: the
    remover's own); ``remover`` is the :class:`BackgroundRemover` to use (default weights if None);
    ``smoothing`` 0 turns temporal smoothing off; ``progress`` is called as ``progress(done, total)``.

    Raises:
        InvalidVideoError: ``source`` is not a readable video.
        InvalidArgumentError: an unsupported destination, or MP4 without a background.
        BackendUnavailableError: PyAV (the ``[video]`` extra) is missing.
    """
    av = _av()
    from .api import BackgroundRemover

    source, destination = Path(source), Path(destination)
    kind = _output_kind(destination, background)
    smoother = TemporalSmoother(smoothing)
    remover = remover or BackgroundRemover()
    try:
        container = av.open(str(source))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InvalidVideoError(f"{source} is not a readable video: {exc}") from exc
    with container:
        if not container.streams.video:
            raise InvalidVideoError(f"{source} holds no video stream")
        video_in = container.streams.video[0]
        audio_in = container.streams.audio[0] if container.streams.audio else None
        rate = Fraction(video_in.average_rate or video_in.guessed_rate or 25)
        total = video_in.frames or None
        width, height = video_in.codec_context.width, video_in.codec_context.height
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent.resolve() if destination.parent.exists() else None))
        target = staging / ("frames" if kind == "frames" else destination.name)
        try:
            writer = _Writer(av, kind, target, rate, (width, height), audio_in)
            done = 0
            streams = [video_in] if audio_in is None else [video_in, audio_in]
            try:
                for packet in container.demux(*streams):
                    for frame in packet.decode():
                        if packet.stream is audio_in:
                            writer.audio(frame)
                            continue
                        rgb = frame.to_image()
                        alpha = smoother(rgb, remover.predict_alpha([rgb], refine=refine)[0])
                        if threshold is not None:
                            alpha = (alpha >= threshold).astype(np.float32)
                        writer.video(remover.apply_mask(rgb, alpha, background=background))
                        done += 1
                        if progress is not None:
                            progress(done, total)
            except av.error.FFmpegError as exc:
                raise InvalidVideoError(f"{source} could not be decoded after {done} frames: {exc}") from exc
            writer.close()
            if done == 0:
                raise InvalidVideoError(f"{source} holds no frames")
            destination.parent.mkdir(parents=True, exist_ok=True)
            if kind == "frames" and destination.exists():
                shutil.rmtree(destination)
            os.replace(target, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return VideoResult(done, float(rate), (width, height), audio_in is not None and kind != "frames", destination)


class _Writer:
    """Encodes RGBA/RGB frames (and audio) into one of the output kinds."""

    def __init__(self, av: Any, kind: str, target: Path, rate: Fraction, size: tuple[int, int], audio_in: Any) -> None:
        self.av, self.kind, self.target = av, kind, target
        self.count = 0
        self.audio_out: Any = None
        if kind == "frames":
            target.mkdir(parents=True)
            self.container = None
            return
        self.container = av.open(str(target), mode="w")
        codec, pixel_format = _VIDEO_CODECS[kind]
        options = {"profile": "4"} if kind == "mov" else {}
        self.stream = self.container.add_stream(codec, rate=rate, options=options)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = pixel_format
        if kind == "webm":
            # libvpx keeps alpha only when told to; a quality target keeps the file small.
            self.stream.options = {"auto-alt-ref": "0", "crf": "30", "b": "0"}
        if audio_in is not None:
            self.audio_out = self.container.add_stream(_AUDIO_CODECS[kind], rate=audio_in.codec_context.sample_rate or 48000)
            self.resampler = av.AudioResampler(format=self.audio_out.codec_context.format,
                                               layout=self.audio_out.codec_context.layout,
                                               rate=self.audio_out.codec_context.sample_rate)

    def video(self, image: Image.Image) -> None:
        self.count += 1
        if self.container is None:
            image.save(self.target / f"frame_{self.count:06d}.png")
            return
        # from_ndarray, not from_image: PyAV's from_image drops the alpha channel.
        mode, layout = ("RGB", "rgb24") if self.kind == "mp4" else ("RGBA", "rgba")
        frame = self.av.VideoFrame.from_ndarray(np.asarray(image.convert(mode)), format=layout)
        frame = frame.reformat(format=self.stream.pix_fmt)
        frame.pts = self.count - 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def audio(self, frame: Any) -> None:
        if self.audio_out is None:
            return
        frame.pts = None
        for resampled in self.resampler.resample(frame):
            for packet in self.audio_out.encode(resampled):
                self.container.mux(packet)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        if self.audio_out is not None:
            for resampled in self.resampler.resample(None):
                for packet in self.audio_out.encode(resampled):
                    self.container.mux(packet)
            for packet in self.audio_out.encode(None):
                self.container.mux(packet)
        self.container.close()
