from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from bgremove_plugin import (
    BackgroundRemover,
    BgRemoveError,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidImageError,
    remove_background,
)

from .conftest import FIXTURES, PORTRAIT


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    return Image.open(PORTRAIT).convert("RGB")


@pytest.fixture(scope="module")
def tiny(tiny_weights: Path) -> BackgroundRemover:
    return BackgroundRemover(tiny_weights, device="cpu")


def test_import_is_light() -> None:
    code = "import sys, bgremove_plugin; print('torch' in sys.modules, 'gradio' in sys.modules, 'pycocotools' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_default_call_returns_same_size_rgba_with_soft_alpha(portrait: Image.Image) -> None:
    cutout = remove_background(portrait)
    assert cutout.mode == "RGBA" and cutout.size == portrait.size
    alpha = np.asarray(cutout.getchannel("A"))
    assert alpha.min() < 20 and alpha.max() > 235, "a portrait has both person and background"
    assert len(np.unique(alpha)) > 10, "alpha stays soft unless a threshold is asked for"
    opaque = alpha == 255  # colours change only where alpha is partial (decontamination), never here
    assert opaque.any()
    np.testing.assert_array_equal(np.asarray(cutout)[..., :3][opaque], np.asarray(portrait)[opaque])


def test_the_portrait_is_cut_out(portrait: Image.Image) -> None:
    alpha = np.asarray(remove_background(portrait, return_mask=True), dtype=np.float32) / 255
    # Floors under the shipped weights (measured 0.85 and 0.00 with coco-fcdn56 epoch 41, 0.85 and 0.00 with gpu-fcdn56 epoch 140 and its two-source decision point, 0.84 and 0.00 with its CCP-only one, 0.84 and 0.18 with epoch 118, 0.81 and 0.33 with epoch 101).
    face_and_chest = alpha[120:400, 170:330].mean()
    sky_and_flag_corner = alpha[:80, 380:].mean()
    assert face_and_chest > 0.6
    assert sky_and_flag_corner < 0.45
    assert face_and_chest > sky_and_flag_corner + 0.3


def test_a_photo_without_people_gives_a_mostly_empty_mask() -> None:
    alpha = np.asarray(remove_background(FIXTURES / "coffee.jpg", return_mask=True), dtype=np.float32) / 255
    assert alpha.mean() < 0.25  # measured 0.14 with coco-fcdn56 epoch 41, 0.02 with epoch 140 (two-source decision point; 0.01 with CCP's) and 0.01 with 118, 0.02 with 101 (0.34 with epoch 96, before close-ups)


@pytest.mark.parametrize(
    ("mode", "colour"),
    [
        ("RGB", (200, 40, 10)),
        ("RGBA", (200, 40, 10)),
        ("L", (84, 84, 84)),
        ("LA", (84, 84, 84)),
        ("CMYK", (200, 40, 10)),
        ("1", (0, 0, 0)),
        ("I;16", (84, 84, 84)),  # 84 x 257: 16-bit levels map back to their 8-bit grey
        ("F", (128, 128, 128)),  # float greyscale in [0, 1]: 0.5 is mid-grey
    ],
)
def test_every_pil_mode_is_accepted_with_its_colours(tiny: BackgroundRemover, mode: str, colour: tuple[int, int, int]) -> None:
    source = Image.new("RGB", (97, 61), (200, 40, 10))
    if mode == "I;16":
        image = Image.new(mode, (97, 61), 84 * 257)
    elif mode == "F":
        image = Image.new(mode, (97, 61), 0.5)
    elif mode == "1":
        image = source.convert(mode, dither=Image.Dither.NONE)
    else:
        image = source.convert(mode)
    out = tiny(image)
    assert out.mode == "RGBA" and out.size == (97, 61)
    # Without decontamination the cut-out keeps the photo's colours and only adds alpha.
    assert (np.asarray(out)[..., :3].reshape(-1, 3) == colour).all()


def test_a_palette_image_keeps_its_colours(tiny: BackgroundRemover, portrait: Image.Image) -> None:
    image = portrait.resize((97, 61)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = tiny(image)
    np.testing.assert_array_equal(np.asarray(out)[..., :3], np.asarray(image.convert("RGB")))


def test_transparent_input_pixels_stay_transparent(tiny: BackgroundRemover, portrait: Image.Image) -> None:
    rgba = portrait.resize((64, 64)).convert("RGBA")
    rgba.putalpha(Image.new("L", (64, 64), 0))
    assert np.asarray(tiny(rgba).getchannel("A")).max() == 0


def test_exif_orientation_is_respected(tiny: BackgroundRemover, tmp_path: Path, portrait: Image.Image) -> None:
    image = portrait.resize((80, 40))
    exif = image.getexif()
    exif[0x0112] = 8  # displayed rotated by 90 degrees
    path = tmp_path / "rotated.png"  # lossless, so the colours compare exactly
    image.save(path, exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert upright.shape == (80, 40, 3) and not np.array_equal(upright, upright[::-1, ::-1])  # a wrong turn shows
    for given in (path, path.read_bytes(), Image.open(path)):
        out = tiny(given)
        assert out.size == (40, 80)
        np.testing.assert_array_equal(np.asarray(out)[..., :3], upright)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((30, 40), dtype=np.uint8),
        np.zeros((30, 40, 3), dtype=np.uint8),
        np.zeros((30, 40, 4), dtype=np.uint8),
        np.full((30, 40, 3), 0.5, dtype=np.float32),
        np.ones((30, 40, 1), dtype=np.float64),
    ],
)
def test_numpy_arrays_are_accepted(tiny: BackgroundRemover, array: np.ndarray) -> None:
    out = tiny(array)
    assert out.mode == "RGBA" and out.size == (40, 30)


@pytest.mark.parametrize(
    ("array", "colour"),
    [
        (np.full((30, 40, 3), 0.5, dtype=np.float32), 128),  # float arrays are [0, 1]
        (np.ones((30, 40, 1), dtype=np.float64), 255),
        (np.full((30, 40), 7, dtype=np.uint8), 7),
        (np.full((30, 40, 4), 90, dtype=np.uint8), 90),
    ],
)
def test_numpy_arrays_keep_their_values(tiny: BackgroundRemover, array: np.ndarray, colour: int) -> None:
    assert (np.asarray(tiny(array))[..., :3] == colour).all()


def test_paths_and_bytes_are_accepted(tiny: BackgroundRemover) -> None:
    assert tiny(str(PORTRAIT)).size == (512, 512)
    assert tiny(PORTRAIT).size == (512, 512)
    assert tiny(PORTRAIT.read_bytes()).size == (512, 512)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (12, "got int"),
        (None, "got NoneType"),
        (b"", "empty bytes"),
        (b"not an image at all", "not a readable image"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "empty numpy array"),
        (np.zeros((5, 5, 2), dtype=np.uint8), "shape"),
        (np.full((5, 5, 3), 2.0), r"\[0, 1\]"),
        (np.zeros((5, 5, 3), dtype=np.int32), "dtype"),
        ("/no/such/file.jpg", "no image file"),
    ],
)
def test_bad_inputs_raise_a_typed_error(tiny: BackgroundRemover, bad: object, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        tiny(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"threshold": 2.0}, "threshold must be between 0 and 1"),
        ({"refine": "bogus"}, "refine='bogus' is not one of"),
        ({"background": "notacolour"}, "not a colour name"),
        ({"background": (300, 0, 0)}, "0-255 ints"),
    ],
)
def test_bad_options_raise_a_typed_error_naming_what_is_accepted(
    tiny: BackgroundRemover, option: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as raised:
        tiny.remove(Image.new("RGB", (8, 8)), **option)  # type: ignore[arg-type]
    assert isinstance(raised.value, BgRemoveError) and isinstance(raised.value, ValueError)


def test_an_unknown_backend_is_a_typed_error(tiny_weights: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="backend must be 'auto', 'torch' or 'onnx'"):
        BackgroundRemover(tiny_weights, backend="tensorrt")  # type: ignore[arg-type]


def test_a_decompression_bomb_is_an_invalid_image_naming_the_limit(
    tiny: BackgroundRemover, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # Pillow refuses over twice this: 4,000 pixels
    for given in (path, path.read_bytes()):
        with pytest.raises(InvalidImageError, match="decompression-bomb limit of 4,000 pixels"):
            tiny(given)


def test_a_text_file_is_not_an_image(tiny: BackgroundRemover, tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(InvalidImageError, match="notes.jpg"):
        tiny(path)


def test_background_colour_and_image_give_rgb(tiny: BackgroundRemover, portrait: Image.Image) -> None:
    small = portrait.resize((64, 48))
    mask = np.asarray(tiny.remove(small, return_mask=True), dtype=np.float32)[..., None] / 255
    red = np.asarray(tiny.remove(small, background="#ff0000", decontaminate=False), dtype=np.float32)
    expected = np.asarray(small, dtype=np.float32) * mask + np.array([255, 0, 0]) * (1 - mask)
    assert np.abs(red - expected).max() <= 1.5
    on_image = tiny.remove(small, background=Image.new("RGB", (10, 10), (0, 0, 255)))
    assert on_image.mode == "RGB" and on_image.size == (64, 48)
    assert tiny.remove(small, background=(0, 255, 0)).mode == "RGB"
    with pytest.raises(InvalidArgumentError, match="colour"):
        tiny.remove(small, background="not-a-colour")


def test_a_predicted_mask_applied_later_gives_what_remove_gives(tiny: BackgroundRemover, portrait: Image.Image) -> None:
    small = portrait.resize((64, 48))
    mask = tiny.predict_masks([small])[0]
    np.testing.assert_array_equal(np.asarray(tiny.apply_mask(small, mask)), np.asarray(tiny.remove(small)))
    on_red = tiny.apply_mask(small, mask, background="#ff0000")
    np.testing.assert_array_equal(np.asarray(on_red), np.asarray(tiny.remove(small, background="#ff0000")))
    alpha = tiny.predict_alpha([small])[0]
    from_alpha = np.asarray(tiny.apply_mask(small, alpha), dtype=np.int16)[..., 3]
    assert np.abs(from_alpha - np.asarray(mask, dtype=np.int16)).max() <= 1  # float alpha rounds back to 8 bits
    # An edited mask is honoured as given: all-person keeps every pixel opaque.
    assert np.asarray(tiny.apply_mask(small, Image.new("L", small.size, 255)))[..., 3].min() == 255
    with pytest.raises(InvalidImageError, match="64x48"):
        tiny.apply_mask(small, mask.resize((48, 64)))
    with pytest.raises(InvalidImageError, match="2-D"):
        tiny.apply_mask(small, np.zeros((48, 64, 3), dtype=np.uint8))


def test_mask_and_threshold(tiny: BackgroundRemover, portrait: Image.Image) -> None:
    mask = tiny.remove(portrait, return_mask=True)
    assert mask.mode == "L" and mask.size == portrait.size
    hard = np.asarray(tiny.remove(portrait, return_mask=True, threshold=0.5))
    assert set(np.unique(hard)) <= {0, 255}
    np.testing.assert_array_equal(hard == 255, np.asarray(mask) >= 128)
    with pytest.raises(InvalidArgumentError, match="threshold"):
        tiny.remove(portrait, threshold=1.5)


def test_refine_modes_agree_inside_and_differ_at_edges(tiny: BackgroundRemover, portrait: Image.Image) -> None:
    guided = np.asarray(tiny.remove(portrait, return_mask=True), dtype=np.int16)  # the remover's default
    plain = np.asarray(tiny.remove(portrait, return_mask=True, refine="none"), dtype=np.int16)
    assert guided.shape == plain.shape == (portrait.height, portrait.width)
    assert not np.array_equal(guided, plain)
    assert np.abs(guided - plain).mean() < 20  # the same map underneath, reshaped at edges only
    with pytest.raises(InvalidArgumentError, match="refine"):
        tiny.remove(portrait, refine="crf")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="refine"):
        BackgroundRemover(tiny.model, refine="sharp")  # type: ignore[arg-type]


def test_decontamination_changes_only_soft_edge_colours(tiny: BackgroundRemover, portrait: Image.Image) -> None:
    cleaned = np.asarray(tiny.remove(portrait, decontaminate=True))
    original = np.asarray(tiny.remove(portrait))  # off by default: the photo's own colours
    np.testing.assert_array_equal(cleaned[..., 3], original[..., 3])  # same alpha
    alpha = cleaned[..., 3]
    settled = (alpha == 0) | (alpha == 255)
    np.testing.assert_array_equal(cleaned[settled], original[settled])
    np.testing.assert_array_equal(original[..., :3], np.asarray(portrait.convert("RGB")))
    assert (cleaned[~settled, :3] != original[~settled, :3]).any()


def test_alpha_range_snaps_confident_pixels_and_keeps_the_decision(tiny_weights: Path, portrait: Image.Image) -> None:
    from bgremove_plugin.hub import build_from_folder

    full = BackgroundRemover(build_from_folder(tiny_weights), device="cpu", backend="torch")
    snapped_net = build_from_folder(tiny_weights)
    snapped_net.alpha_range = (0.4, 0.6)
    snapped = BackgroundRemover(snapped_net, device="cpu", backend="torch")
    small = portrait.resize((64, 64))  # the tiny net's working size: no upsampling between the two maps
    soft = full.predict_alpha([small], refine="none")[0]
    hard = snapped.predict_alpha([small], refine="none")[0]
    expected = np.clip((soft - 0.4) / 0.2, 0.0, 1.0)
    assert np.abs(hard - expected).max() <= 6 / 255  # 8-bit rounding, amplified 5x by the range
    assert ((hard == 0) | (hard == 1)).mean() > ((soft == 0) | (soft == 1)).mean()
    decided = np.abs(soft - 0.5) > 2 / 255
    np.testing.assert_array_equal((hard > 0.5)[decided], (soft > 0.5)[decided])


def test_the_shipped_alpha_range_removes_most_haze(portrait: Image.Image) -> None:
    from bgremove_plugin.hub import DEFAULT_WEIGHTS_DIR, build_from_folder

    def partial_share(net: object) -> float:
        alpha = np.asarray(BackgroundRemover(net, device="cpu", backend="torch").remove(portrait, return_mask=True))  # type: ignore[arg-type]
        return float(((alpha > 0) & (alpha < 255)).mean())

    raw = build_from_folder(DEFAULT_WEIGHTS_DIR)
    raw.alpha_range = (0.0, 1.0)
    shipped = build_from_folder(DEFAULT_WEIGHTS_DIR)
    assert shipped.alpha_range[0] > 0.0 and shipped.alpha_range[1] < 1.0
    # Measured (coco-fcdn56 epoch 41): 94% partly transparent with raw probabilities, 29% snapped. Epoch 140 (two-source decision point): 61% of the portrait's pixels are partly transparent with raw probabilities, 25% snapped (CCP-only point: 62%, 26%; epoch 118: 72%, 30%).
    assert partial_share(shipped) < 0.6 * partial_share(raw)


def test_batches_match_single_calls(tiny: BackgroundRemover, portrait: Image.Image) -> None:
    images = [portrait.resize((64 + 8 * i, 48)) for i in range(5)]
    batched = tiny.remove_many(images)
    for image, out in zip(images, batched):
        single = np.asarray(tiny(image), dtype=np.int16)
        assert np.abs(single - np.asarray(out, dtype=np.int16)).max() <= 1


def test_shared_between_threads_gives_the_same_results(tiny: BackgroundRemover, portrait: Image.Image) -> None:
    inputs = [portrait.resize((64 + 16 * i, 64)) for i in range(4)]
    expected = [np.asarray(tiny(image)) for image in inputs]
    results: dict[int, list[np.ndarray]] = {}

    def work(worker: int) -> None:
        results[worker] = [np.asarray(tiny(image)) for image in inputs]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outputs in results.values():
        for got, want in zip(outputs, expected):
            np.testing.assert_array_equal(got, want)
    assert len(results) == 4


def test_unavailable_device_fails_loudly() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        remove_background(PORTRAIT, device="cuda")


def test_output_saves_as_png_with_alpha(tiny: BackgroundRemover) -> None:
    buffer = io.BytesIO()
    tiny(PORTRAIT).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "RGBA"
