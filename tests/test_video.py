"""Video cut-outs: a tiny clip made here (with audio) and the real clips of the shared data."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from bgremove_plugin import BackgroundRemover, InvalidVideoError, remove_background_video
from bgremove_plugin.cli import main
from bgremove_plugin.errors import InvalidArgumentError
from bgremove_plugin.video import TemporalSmoother

from .conftest import PORTRAIT, shared_data_root

FRAMES = 12
SIZE = (96, 64)


def _make_clip(path: Path, *, frames: int = FRAMES, picture: Image.Image | None = None, audio: bool = True) -> Path:
    portrait = picture or Image.open(PORTRAIT).convert("RGB").resize(SIZE)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height = portrait.size
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i in range(frames):
            frame = av.VideoFrame.from_image(portrait.rotate(i * 3) if picture is None else portrait)
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        if sound is not None:
            samples = (0.3 * np.sin(np.linspace(0, 400, 1600 * frames))).astype(np.float32)[None]
            for start in range(0, samples.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, start
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
    return path


def _decoded(path: Path) -> tuple[list[np.ndarray], Fraction, int]:
    """Every frame as RGBA (WebM through libvpx, which reads the alpha plane), the rate, the audio streams."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate)
        decoder = av.CodecContext.create("libvpx-vp9", "r") if stream.codec_context.name == "vp9" else stream.codec_context
        # demux ends with an empty packet, which flushes the decoder.
        frames = [frame.to_ndarray(format="rgba") for packet in container.demux(stream) for frame in decoder.decode(packet)]
        return frames, rate, len(container.streams.audio)


@pytest.fixture(scope="module")
def remover(tiny_weights: Path) -> BackgroundRemover:
    return BackgroundRemover(tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.mark.parametrize("name", ["out.webm", "out.mov"])
def test_webm_and_mov_keep_frames_rate_size_audio_and_alpha(
    clip: Path, tmp_path: Path, remover: BackgroundRemover, name: str
) -> None:
    result = remove_background_video(clip, tmp_path / name, remover=remover, smoothing=0.0)
    assert (result.frames, result.fps, result.size, result.audio) == (FRAMES, 10.0, SIZE, True)
    frames, rate, audio_streams = _decoded(tmp_path / name)
    assert len(frames) == FRAMES and rate == 10 and audio_streams == 1
    assert frames[0].shape == (SIZE[1], SIZE[0], 4)
    # The alpha plane is the cut-out's: compare with the photo path on the same first frame.
    with av.open(str(clip)) as source:
        first = next(source.decode(video=0)).to_image()
    expected = np.asarray(remover.remove(first, return_mask=True), dtype=np.int16)
    assert np.abs(frames[0][..., 3].astype(np.int16) - expected).mean() < 6  # video codecs are lossy
    assert frames[0][..., 3].std() > 5  # alpha varies across the frame: it is not an opaque plane


def test_mp4_is_composited_on_the_background_and_refuses_transparency(clip: Path, tmp_path: Path, remover: BackgroundRemover) -> None:
    with pytest.raises(InvalidArgumentError, match="MP4"):
        remove_background_video(clip, tmp_path / "out.mp4", remover=remover)
    assert not (tmp_path / "out.mp4").exists()
    result = remove_background_video(clip, tmp_path / "out.mp4", remover=remover, background="white")
    frames, _, audio_streams = _decoded(tmp_path / "out.mp4")
    assert result.frames == len(frames) == FRAMES and audio_streams == 1 and (frames[0][..., 3] == 255).all()


def test_a_folder_gets_one_rgba_png_per_frame_with_the_edges_asked_for(
    clip: Path, tmp_path: Path, remover: BackgroundRemover
) -> None:
    remove_background_video(clip, tmp_path / "frames", remover=remover, smoothing=0.0)
    pngs = sorted((tmp_path / "frames").glob("*.png"))
    assert [p.name for p in pngs] == [f"frame_{i:06d}.png" for i in range(1, FRAMES + 1)]
    assert all(Image.open(p).mode == "RGBA" and Image.open(p).size == SIZE for p in pngs)
    with av.open(str(clip)) as source:
        first = next(source.decode(video=0)).to_image()
    for refine in ("guided", "none"):
        remove_background_video(clip, tmp_path / refine, remover=remover, smoothing=0.0, refine=refine)
        written = np.asarray(Image.open(tmp_path / refine / "frame_000001.png"))[..., 3]
        np.testing.assert_array_equal(written, np.asarray(remover.remove(first, refine=refine, return_mask=True)))


def test_a_corrupt_or_non_video_file_is_a_clear_error_and_writes_nothing(tmp_path: Path, remover: BackgroundRemover) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(InvalidVideoError, match="bad.mp4"):
        remove_background_video(bad, tmp_path / "out.webm", remover=remover)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]  # no output, no leftover staging folder


def test_temporal_smoothing_blends_only_where_the_picture_stands_still() -> None:
    smoother = TemporalSmoother(0.5)
    frame = Image.new("RGB", (8, 8), (100, 100, 100))
    first = smoother(frame, np.zeros((8, 8), dtype=np.float32))
    assert (first == 0).all()
    moved = np.asarray(frame).copy()
    moved[:, 4:] = 250  # the right half changes
    second = smoother(Image.fromarray(moved), np.ones((8, 8), dtype=np.float32))
    assert (second[:, :2] == 0.5).all() and (second[:, 6:] == 1.0).all()
    with pytest.raises(InvalidArgumentError):
        TemporalSmoother(1.0)


def test_the_cli_recognises_a_video_by_its_container(clip: Path, tmp_path: Path, tiny_weights: Path) -> None:
    out = tmp_path / "clip.webm"
    assert main([str(clip), "-o", str(out), "--model", str(tiny_weights), "--device", "cpu", "-q"]) == 0
    assert len(_decoded(out)[0]) == FRAMES
    assert main([str(clip), "-o", str(tmp_path / "clip.mp4"), "--model", str(tiny_weights), "--device", "cpu"]) == 1


def test_frames_without_a_person_stay_transparent(tmp_path: Path) -> None:
    wall = Image.new("RGB", SIZE, (180, 170, 150))
    empty = _make_clip(tmp_path / "wall.mp4", frames=6, picture=wall, audio=False)
    remove_background_video(empty, tmp_path / "wall.webm", remover=BackgroundRemover(device="cpu"))
    frames, _, audio_streams = _decoded(tmp_path / "wall.webm")
    assert len(frames) == 6 and audio_streams == 0 and max(f[..., 3].mean() for f in frames) < 0.02 * 255


ROOM_EMPTY = [range(55), range(452, 501)]
"""Frames of one-by-one-person-detection.mp4 with nobody in the room (checked by eye on a contact sheet)."""
ROOM_PERSON = range(100, 116)
"""Frames with one person standing by the table, whole body, about a tenth of the picture."""


def _excerpt(source: Path, keep: list[range], path: Path) -> tuple[Path, list[bool]]:
    """The frames of ``source`` in ``keep``, re-encoded as one clip; for each, whether it is in ``ROOM_EMPTY``."""
    wanted = {i for part in keep for i in part}
    empty = []
    with av.open(str(source)) as reader, av.open(str(path), "w") as writer:
        stream = writer.add_stream("libx264", rate=10)
        stream.width, stream.height = reader.streams.video[0].width, reader.streams.video[0].height
        stream.pix_fmt = "yuv420p"
        for i, frame in enumerate(reader.decode(video=0)):
            if i > max(wanted):
                break
            if i in wanted:
                picture = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
                picture.pts = len(empty)
                writer.mux(stream.encode(picture))
                empty.append(any(i in part for part in ROOM_EMPTY))
        writer.mux(stream.encode(None))
    return path, empty


def test_a_room_clip_is_transparent_while_nobody_is_in_it(tmp_path: Path) -> None:
    source = shared_data_root() / "video" / "one-by-one-person-detection.mp4"
    if not source.exists():
        pytest.skip(f"the shared video clips are not at {source.parent}")
    clip, empty = _excerpt(source, [*ROOM_EMPTY, ROOM_PERSON], tmp_path / "room.mp4")
    remove_background_video(clip, tmp_path / "frames", remover=BackgroundRemover(device="cpu"))
    kept = [float((np.asarray(Image.open(png))[..., 3] >= 128).mean()) for png in sorted((tmp_path / "frames").glob("*.png"))]
    assert len(kept) == len(empty) == 55 + 49 + 16
    worst_empty = max(share for share, nobody in zip(kept, empty) if nobody)
    assert worst_empty < 0.005, f"{worst_empty:.1%} of an empty room kept"
    assert min(share for share, nobody in zip(kept, empty) if not nobody) > 0.03, "the person standing in the room was lost"


def test_a_real_webcam_clip_keeps_its_frames_and_size(tmp_path: Path) -> None:
    source = shared_data_root() / "video" / "asl_gestures" / "thanks.mkv"
    if not source.exists():
        pytest.skip(f"the shared video clips are not at {source.parent}")
    with av.open(str(source)) as container:
        count = sum(1 for _ in container.decode(video=0))
    result = remove_background_video(source, tmp_path / "thanks.webm", remover=BackgroundRemover(device="cpu"))
    frames, _, _ = _decoded(tmp_path / "thanks.webm")
    assert result.frames == len(frames) == count and frames[0].shape == (480, 640, 4)
    alpha = np.stack([f[..., 3] for f in frames]).astype(np.float32) / 255
    assert 0.1 < alpha.mean() < 0.7  # a person signing to a webcam, waist up, cut out of an office
