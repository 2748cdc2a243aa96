"""Gradio demo: upload a photo of people, get a cut-out with a transparent (or new) background.

Run locally with ``python app.py`` (host and port from ``--server-name``/``--server-port`` or Gradio's
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT); the same file runs as a Hugging Face Space.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

# Set before gradio is imported: it reads the variable once. The demo never phones home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from PIL import Image, ImageFilter, ImageOps

from bgremove_plugin import BackgroundRemover, InvalidImageError, InvalidVideoError, remove_background_video

MAX_PIXELS = int(os.environ.get("BGREMOVE_MAX_PIXELS", "40000000"))
MAX_FILE_SIZE = os.environ.get("BGREMOVE_MAX_FILE_SIZE", "30mb")
MAX_VIDEO_FRAMES = int(os.environ.get("BGREMOVE_MAX_VIDEO_FRAMES", "300"))
"""Clips longer than this (10 s at 30 fps) are refused: every frame is a full cut-out."""
KEEP_SECONDS = int(os.environ.get("BGREMOVE_KEEP_SECONDS", "900"))
"""How long a result stays downloadable; then it is deleted, with Gradio's copies of uploads and results."""
if os.environ.get("BGREMOVE_RESULTS_DIR"):
    RESULTS = Path(os.environ["BGREMOVE_RESULTS_DIR"])
else:  # a folder of our own: removed with everything in it when the server stops
    RESULTS = Path(tempfile.mkdtemp(prefix="bgremove-demo-"))
    atexit.register(shutil.rmtree, RESULTS, ignore_errors=True)
EXAMPLES = [str(p) for p in sorted((Path(__file__).parent / "examples").glob("*.jpg"))]
BACKGROUNDS = ["transparent", "colour", "blurred original", "image"]
# Matting is offered only where its extra (pymatting) is installed, e.g. on the Space (requirements.txt).
EDGES = ["guided", "none"] + (["matting"] if importlib.util.find_spec("pymatting") else [])

# Loaded once at start-up and shared by every request; inference holds no per-request state.
remover = BackgroundRemover(device=os.environ.get("BGREMOVE_DEVICE", "auto"))


def _background_for(
    photo: Image.Image, background: str, colour: str | None, backdrop: Image.Image | None
) -> str | Image.Image | None:
    """What the library's ``background=`` gets for the chosen option (None keeps the cut-out transparent)."""
    if background == "colour":
        return colour or "#ffffff"
    if background == "blurred original":
        return photo.convert("RGB").filter(ImageFilter.GaussianBlur(max(photo.size) / 60))
    if background == "image":
        if backdrop is None:
            raise gr.Error("Choose a background image, or pick another background option.")
        return backdrop  # the library applies its EXIF orientation
    return None


def _result_path(suffix: str) -> str:
    """A new file for one result in RESULTS (deleted KEEP_SECONDS later by ``_delete_expired_results``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix="cutout-", suffix=suffix, dir=RESULTS)
    os.close(handle)
    return path


def _delete_expired_results(period: float) -> None:
    """Every ``period`` seconds, delete the results older than KEEP_SECONDS (runs for the server's life)."""
    while True:
        time.sleep(period)
        expired = time.time() - KEEP_SECONDS
        for old in RESULTS.glob("cutout-*"):
            try:
                if old.stat().st_mtime < expired:
                    old.unlink()
            except FileNotFoundError:  # gone already
                pass


def cut_out(
    photo: Image.Image | None,
    background: str,
    colour: str | None,
    backdrop: Image.Image | None,
    edges: str = "guided",
    decontaminate: bool = False,
) -> tuple[Image.Image, Image.Image, str]:
    """Run one request: returns the result, the mask and the path of the PNG to download."""
    if photo is None:
        raise gr.Error("Upload a photo first (or click one of the examples).")
    if photo.width * photo.height > MAX_PIXELS:
        raise gr.Error(
            f"That photo has {photo.width * photo.height / 1e6:.0f} megapixels; this demo accepts up to "
            f"{MAX_PIXELS / 1e6:.0f}. Please resize it and try again."
        )
    if edges not in EDGES:
        raise gr.Error(f"Edges must be one of {', '.join(EDGES)}.")
    try:
        # Upright as displayed: the blurred-original background must line up with the mask predicted from it.
        oriented = ImageOps.exif_transpose(photo)
        # One forward pass: the mask is shown as well as used, so it is applied here rather than calling remove twice.
        mask = remover.predict_masks([oriented], refine=edges)[0]  # type: ignore[arg-type]
        behind = _background_for(oriented, background, colour, backdrop)
    except InvalidImageError as exc:
        raise gr.Error(str(exc)) from exc
    try:
        result = remover.apply_mask(oriented, mask, background=behind, decontaminate=decontaminate)
    except ValueError as exc:  # the only option apply_mask can refuse here is an unreadable colour
        raise gr.Error(f"{exc}; pick one with the colour picker.") from exc
    if result.mode == "RGBA":  # a transparent cut-out: show its alpha, which keeps the input's own transparency
        mask = result.getchannel("A")
    path = _result_path(".png")
    result.save(path)
    return result, mask, path


def cut_out_video(clip: str | None, colour: str | None, on_colour: bool) -> tuple[str, str]:
    """Run one video request: returns the clip to play and the file to download (WebM with alpha, or MP4
    on the colour)."""
    if clip is None:
        raise gr.Error("Upload a clip first.")
    import av

    try:
        with av.open(clip) as container:
            stream = container.streams.video[0]
            frames = stream.frames or int(float(container.duration or 0) / 1e6 * float(stream.average_rate or 30))
            pixels = stream.codec_context.width * stream.codec_context.height
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise gr.Error(f"That file is not a readable video: {exc}") from exc
    if frames > MAX_VIDEO_FRAMES or pixels > MAX_PIXELS:
        raise gr.Error(f"This demo takes clips of up to {MAX_VIDEO_FRAMES} frames; please trim it and try again.")
    path = _result_path(".mp4" if on_colour else ".webm")
    try:
        remove_background_video(clip, path, background=(colour or "#ffffff") if on_colour else None, remover=remover)
    except InvalidVideoError as exc:
        raise gr.Error(str(exc)) from exc
    return path, path


# Gradio keeps its own copies of uploads and results; checked every tenth of KEEP_SECONDS, none lives longer.
_CHECK_SECONDS = max(1, KEEP_SECONDS // 10)
with gr.Blocks(
    title="bgremove: remove the background from photos of people",
    delete_cache=(_CHECK_SECONDS, max(1, KEEP_SECONDS - _CHECK_SECONDS)),
) as demo:
    gr.Markdown(
        "# bgremove\nRemove the background from photos of people with a Tiramisu (FC-DenseNet) network. "
        f"Photos and clips are processed on this server and deleted within {max(1, round(KEEP_SECONDS / 60))} min."
    )
    with gr.Row():
        with gr.Column():
            photo = gr.Image(type="pil", label="Photo", image_mode=None, elem_id="photo")
            background = gr.Radio(BACKGROUNDS, value="transparent", label="Background")
            colour = gr.ColorPicker(value="#ffffff", label="Background colour (for 'colour')")
            backdrop = gr.Image(type="pil", label="Background image (for 'image')")
            edges = gr.Radio(
                EDGES,
                value="guided",
                label="Edges: guided follows the photo's edges; none is plain upsampling; matting solves soft "
                "hair and cloth edges (about a second more)",
            )
            decontaminate = gr.Checkbox(value=False, label="Remove the old background's tint from soft edges (slower)")
            submit = gr.Button("Remove background", variant="primary", elem_id="submit")
        with gr.Column():
            result = gr.Image(type="pil", label="Result", format="png", image_mode=None, elem_id="result")
            mask = gr.Image(type="pil", label="Mask", format="png", image_mode="L", elem_id="mask")
            download = gr.File(label="Download PNG", elem_id="download")
    if EXAMPLES:
        gr.Examples(EXAMPLES, inputs=[photo])
    with gr.Accordion("Video", open=False), gr.Row():
        with gr.Column():
            clip = gr.Video(label=f"Clip (up to {MAX_VIDEO_FRAMES} frames)", elem_id="clip")
            video_on_colour = gr.Checkbox(value=False, label="On a colour (MP4) instead of transparent (WebM)")
            video_colour = gr.ColorPicker(value="#ffffff", label="Colour")
            video_submit = gr.Button("Remove background from the clip", elem_id="video-submit")
        with gr.Column():
            video_result = gr.Video(label="Cut-out clip", elem_id="video-result")
            video_download = gr.File(label="Download", elem_id="video-download")
    video_submit.click(
        cut_out_video, inputs=[clip, video_colour, video_on_colour], outputs=[video_result, video_download],
        api_name="remove_video",
    )
    submit.click(
        cut_out,
        inputs=[photo, background, colour, backdrop, edges, decontaminate],
        outputs=[result, mask, download],
        api_name="remove",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="bgremove web demo")
    parser.add_argument("--server-name", default=None, help="host to bind (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--server-port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args()
    # A stopped container gets SIGTERM: handled as Ctrl-C, Gradio closes cleanly and the results go with it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    threading.Thread(target=_delete_expired_results, args=(min(5, KEEP_SECONDS),), daemon=True).start()
    # Two requests run at once; the rest wait in Gradio's queue instead of oversubscribing the CPU.
    demo.queue(default_concurrency_limit=2, max_size=32).launch(
        server_name=args.server_name, server_port=args.server_port, max_file_size=MAX_FILE_SIZE
    )


if __name__ == "__main__":
    main()
