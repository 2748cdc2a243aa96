"""Gradio demo: upload a photo of people, get a cut-out with a transparent (or new) background.

Run locally with ``python app.py`` (host/port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT); the same file
runs as a Hugging Face Space.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from PIL import Image, ImageFilter

from bgremove_plugin import BackgroundRemover, InvalidImageError

MAX_PIXELS = int(os.environ.get("BGREMOVE_MAX_PIXELS", "40000000"))
EXAMPLES = [str(p) for p in sorted((Path(__file__).parent / "examples").glob("*.jpg"))]
BACKGROUNDS = ["transparent", "colour", "blurred original", "image"]

remover = BackgroundRemover(device=os.environ.get("BGREMOVE_DEVICE", "auto"))


def cut_out(
    photo: Image.Image | None, background: str, colour: str, backdrop: Image.Image | None
) -> tuple[Image.Image, Image.Image, str]:
    if photo is None:
        raise gr.Error("Upload a photo first.")
    if photo.width * photo.height > MAX_PIXELS:
        raise gr.Error(f"That photo has {photo.width * photo.height / 1e6:.0f} megapixels; the limit here is {MAX_PIXELS / 1e6:.0f}.")
    try:
        mask = remover.remove(photo, return_mask=True)
    except InvalidImageError as exc:
        raise gr.Error(str(exc)) from exc
    rgb = photo.convert("RGB")
    if background == "colour":
        result = Image.composite(rgb, Image.new("RGB", rgb.size, colour or "#ffffff"), mask)
    elif background == "blurred original":
        result = Image.composite(rgb, rgb.filter(ImageFilter.GaussianBlur(max(rgb.size) / 60)), mask)
    elif background == "image" and backdrop is not None:
        result = remover.remove(photo, background=backdrop)
    else:
        result = rgb.copy()
        result.putalpha(mask)
    handle, path = tempfile.mkstemp(prefix="cutout-", suffix=".png")
    os.close(handle)
    result.save(path)
    return result, mask, path


with gr.Blocks(title="bgremove: remove the background from photos of people") as demo:
    gr.Markdown("# bgremove\nUpload a photo of people. The background is removed on this server; nothing is kept.")
    with gr.Row():
        with gr.Column():
            photo = gr.Image(type="pil", label="Photo", image_mode=None)
            background = gr.Radio(BACKGROUNDS, value="transparent", label="Background")
            colour = gr.ColorPicker(value="#ffffff", label="Background colour")
            backdrop = gr.Image(type="pil", label="Background image (for 'image')")
            submit = gr.Button("Remove background", variant="primary")
        with gr.Column():
            result = gr.Image(type="pil", label="Result", format="png", image_mode="RGBA")
            mask = gr.Image(type="pil", label="Mask", format="png")
            download = gr.File(label="Download PNG")
    if EXAMPLES:
        gr.Examples(EXAMPLES, inputs=[photo])
    submit.click(cut_out, inputs=[photo, background, colour, backdrop], outputs=[result, mask, download], api_name="remove")


if __name__ == "__main__":
    demo.queue(default_concurrency_limit=2).launch()
