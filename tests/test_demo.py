"""The Gradio demo (app.py): Space metadata, the HTTP API through gradio_client, and a real browser session."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import requires
from pathlib import Path
from typing import Any

import gradio
import gradio_client
import huggingface_hub
import numpy as np
import pytest
from PIL import Image
from playwright import sync_api

from bgremove_plugin.hub import OFFICIAL_REPO_ID

from .conftest import PORTRAIT, REPO, free_port

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# Small enough that a photo built in the test trips it, large enough for the 512x512 example.
DEMO_MAX_FRAMES = 20
DEMO_MAX_PIXELS = 1_000_000
DEMO_KEEP_SECONDS = 60


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=!~ \[;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_space_card_front_matter_is_valid() -> None:
    card = huggingface_hub.SpaceCard.load(REPO / "README.md")
    data = card.data
    assert data.sdk == "gradio"
    assert data.app_file == "app.py" and (REPO / data.app_file).is_file()
    assert OFFICIAL_REPO_ID in data.models
    assert data.license == "apache-2.0"
    # The Space must run the Gradio major version the demo is tested with here.
    assert str(data.sdk_version).split(".")[0] == gradio.__version__.split(".")[0]
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(data.sdk_version))
    # The body below the front matter is the README people read, not an empty card.
    assert card.text.lstrip().startswith("# bgremove")


def test_the_demo_uses_only_the_public_api() -> None:
    # The Space is the example people copy: what it needs from the package, every user may need too.
    import ast

    import bgremove_plugin

    tree = ast.parse((REPO / "app.py").read_text())
    imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if (node.module or "").startswith("bgremove_plugin")]
    assert imported, "app.py no longer imports bgremove_plugin"
    for module, name in imported:
        assert module == "bgremove_plugin" and name in bgremove_plugin.__all__, f"app.py imports {module}.{name}"


def test_space_requirements_cover_the_package_dependencies() -> None:
    declared = [dep for dep in requires("bgremove_plugin") or [] if "extra ==" not in dep]
    assert declared, "bgremove_plugin's metadata lists no dependencies: is the package installed?"
    lines = [
        line
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    listed = {_requirement_name(line) for line in lines}
    assert {_requirement_name(dep) for dep in declared} <= listed
    # The CPU wheel the project standardises on, never an unpinned torch that may pull a CUDA build.
    assert "torch==2.13.0" in lines


@contextlib.contextmanager
def _demo_server(env: dict[str, str], log_name: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """app.py on a free port of 127.0.0.1 with ``env``; yields its URL once it answers, and the process."""
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = (ARTIFACTS / log_name).open("w")
    server = subprocess.Popen(
        [sys.executable, "app.py", "--server-name", "127.0.0.1", "--server-port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"app.py exited with {server.returncode}; see {ARTIFACTS / log_name}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("app.py did not answer within 180 s")
            time.sleep(0.5)
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _demo_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "BGREMOVE_MAX_PIXELS": str(DEMO_MAX_PIXELS), "BGREMOVE_DEVICE": "cpu",
           "BGREMOVE_MAX_VIDEO_FRAMES": str(DEMO_MAX_FRAMES), **extra}
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # app.py must switch analytics off by itself
    return env


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-results")


@pytest.fixture(scope="module")
def demo_url(demo_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = _demo_env(
        BGREMOVE_RESULTS_DIR=str(demo_results),
        BGREMOVE_KEEP_SECONDS=str(DEMO_KEEP_SECONDS),
        GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio-cache")),
    )
    with _demo_server(env, "demo-server.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(demo_url: str) -> Any:
    return gradio_client.Client(demo_url, verbose=False)


def _call(
    client: Any,
    photo: Path,
    background: str = "transparent",
    colour: str = "#ffffff",
    edges: str = "guided",
    decontaminate: bool = False,
    backdrop: Path | None = None,
) -> Any:
    from gradio_client import handle_file

    behind = handle_file(str(backdrop)) if backdrop is not None else None
    return client.predict(
        handle_file(str(photo)), background, colour, behind, edges, decontaminate, api_name="/remove"
    )


def test_a_clip_comes_back_cut_out_and_a_long_one_is_refused(client: Any, tmp_path: Path) -> None:
    from gradio_client import handle_file

    from .test_video import _decoded, _make_clip

    clip = _make_clip(tmp_path / "clip.mp4", frames=8, audio=False)
    played, downloaded = client.predict(handle_file(str(clip)), "#ffffff", False, api_name="/remove_video")
    frames, _, _ = _decoded(Path(downloaded))
    assert Path(downloaded).suffix == ".webm" and len(frames) == 8 and frames[0].shape == (64, 96, 4)
    assert frames[0][..., 3].min() < 255  # transparent where the model sees background
    assert Path(played["video"] if isinstance(played, dict) else played).exists()
    long_clip = _make_clip(tmp_path / "long.mp4", frames=DEMO_MAX_FRAMES + 5, audio=False)
    with pytest.raises(Exception, match=f"up to {DEMO_MAX_FRAMES} frames"):
        client.predict(handle_file(str(long_clip)), "#ffffff", False, api_name="/remove_video")


def test_client_gets_an_rgba_cutout_of_the_input_size(client: Any) -> None:
    result_path, mask_path, download_path = _call(client, PORTRAIT)
    with Image.open(PORTRAIT) as photo:
        size = photo.size
    with Image.open(download_path) as downloaded:
        assert downloaded.mode == "RGBA" and downloaded.size == size
        alpha = np.asarray(downloaded.getchannel("A"))
    with Image.open(mask_path) as mask:
        assert mask.size == size
        np.testing.assert_array_equal(np.asarray(mask.convert("L")), alpha)
    with Image.open(result_path) as shown:
        assert shown.size == size and shown.mode == "RGBA"
    # A portrait: both kept and removed pixels, with the person filling a good part of the frame.
    assert alpha.min() < 16 and alpha.max() > 240
    assert 0.15 < (alpha > 127).mean() < 0.9


def test_client_gets_a_phone_photo_upright_and_its_blurred_background_lined_up(client: Any, tmp_path: Path) -> None:
    with Image.open(PORTRAIT) as photo:
        upright = photo.convert("RGB").resize((256, 192))
    sideways = upright.transpose(Image.Transpose.ROTATE_270)  # stored as a phone does; EXIF 8 turns it back
    exif = sideways.getexif()
    exif[0x0112] = 8
    path = tmp_path / "phone.jpg"
    sideways.save(path, exif=exif, quality=95)
    _, _, cutout_path = _call(client, path)
    blurred_path, _, _ = _call(client, path, background="blurred original")
    with Image.open(cutout_path) as cutout, Image.open(blurred_path) as blurred:
        assert cutout.size == blurred.size == upright.size
        alpha = np.asarray(cutout.getchannel("A"))
        person = np.asarray(cutout.convert("RGB"), dtype=np.int16)[alpha == 255]
        composed = np.asarray(blurred.convert("RGB"), dtype=np.int16)
    # Opaque pixels keep the photo's own colours in both outputs; where the person is not, the backdrop is
    # the photo itself blurred, so it stays near the upright photo's colours (a sideways blur would not).
    assert (alpha == 255).mean() > 0.1 and (alpha == 0).mean() > 0.1
    assert np.abs(composed[alpha == 255] - person).mean() < 2
    near = np.abs(composed[alpha == 0] - np.asarray(upright, dtype=np.int16)[alpha == 0]).mean()
    assert near < 40, near  # measured: 13 lined up; a sideways blur fitted to the frame differs by about 86


def test_client_can_choose_the_edges_and_decontamination(client: Any) -> None:
    masks = {}
    for edges in ("guided", "none", "matting"):
        _, mask_path, _ = _call(client, PORTRAIT, edges=edges)
        with Image.open(mask_path) as mask:
            masks[edges] = np.asarray(mask.convert("L"))
    assert masks["guided"].shape == masks["none"].shape == masks["matting"].shape
    assert not np.array_equal(masks["guided"], masks["none"])
    assert not np.array_equal(masks["guided"], masks["matting"])
    plain_result, _, _ = _call(client, PORTRAIT)
    clean_result, _, _ = _call(client, PORTRAIT, decontaminate=True)
    with Image.open(plain_result) as plain, Image.open(clean_result) as clean:
        assert not np.array_equal(np.asarray(plain), np.asarray(clean))


def test_client_puts_the_person_on_a_colour(client: Any) -> None:
    _, mask_path, download_path = _call(client, PORTRAIT, background="colour", colour="#00ff00")
    with Image.open(download_path) as downloaded, Image.open(mask_path) as mask:
        assert downloaded.mode == "RGB"
        pixels = np.asarray(downloaded).astype(int)
        alpha = np.asarray(mask.convert("L"))
    background = pixels[alpha == 0]
    assert len(background) > 0
    assert np.abs(background - [0, 255, 0]).max() <= 2


def test_client_puts_the_person_on_an_image_or_the_blurred_original(client: Any, tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    Image.new("RGB", (300, 200), (255, 0, 0)).save(red)
    _, mask_path, on_red_path = _call(client, PORTRAIT, background="image", backdrop=red)
    _, _, blurred_path = _call(client, PORTRAIT, background="blurred original")
    with Image.open(mask_path) as mask, Image.open(on_red_path) as on_red, Image.open(blurred_path) as blurred:
        alpha = np.asarray(mask.convert("L"))
        on_red_pixels = np.asarray(on_red.convert("RGB")).astype(int)
        blurred_pixels = np.asarray(blurred.convert("RGB")).astype(int)
    with Image.open(PORTRAIT) as photo:
        original = np.asarray(photo.convert("RGB")).astype(int)
    assert on_red_pixels.shape == blurred_pixels.shape == original.shape
    assert np.abs(on_red_pixels[alpha == 0] - [255, 0, 0]).max() <= 2
    person = alpha == 255
    assert np.abs(on_red_pixels[person] - original[person]).max() <= 2
    assert np.abs(blurred_pixels[person] - original[person]).max() <= 2
    # the background is the photo itself, softened: close in colour on average, not pixel for pixel
    changed = np.abs(blurred_pixels[alpha == 0] - original[alpha == 0]).mean()
    assert 2 < changed < 40
    with pytest.raises(Exception, match="background image"):
        _call(client, PORTRAIT, background="image")


def test_results_are_deleted_once_they_are_older_than_the_keep_time(client: Any, demo_results: Path) -> None:
    _call(client, PORTRAIT)
    results = sorted(demo_results.glob("cutout-*.png"), key=lambda p: p.stat().st_mtime)
    assert results, f"the demo wrote no result into {demo_results}"
    newest, aged = results[-1], time.time() - 2 * DEMO_KEEP_SECONDS
    os.utime(newest, (aged, aged))
    deadline = time.monotonic() + 20
    while newest.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not newest.exists(), f"{newest.name} outlived the demo's {DEMO_KEEP_SECONDS} s"
    _call(client, PORTRAIT)  # a fresh result is kept
    time.sleep(6)
    assert any(p.stat().st_mtime > time.time() - DEMO_KEEP_SECONDS for p in demo_results.glob("cutout-*.png"))


def test_a_stopped_demo_leaves_no_results_behind(tmp_path: Path) -> None:
    env = _demo_env(TMPDIR=str(tmp_path), GRADIO_TEMP_DIR=str(tmp_path / "gradio-cache"))
    env.pop("BGREMOVE_RESULTS_DIR", None)
    with _demo_server(env, "demo-server-stop.log") as (url, server):
        _call(gradio_client.Client(url, verbose=False), PORTRAIT)
        assert list(tmp_path.glob("bgremove-demo-*/cutout-*.png")), "the result was not written where expected"
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    assert not list(tmp_path.glob("bgremove-demo-*")), "the stopped demo left its results in the temp folder"


def test_client_is_told_when_a_photo_is_too_large(client: Any, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (1500, 1000), "gray").save(big)
    with pytest.raises(Exception, match="megapixels"):
        _call(client, big)


def test_browser_upload_submit_and_download(demo_url: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"the browser test needs Debian's Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
            page.goto(demo_url)
            page.locator("#photo input[type=file]").set_input_files(str(PORTRAIT))
            page.locator("#photo img").first.wait_for(timeout=30_000)
            page.locator("#submit").click()
            link = page.locator("#download a").first
            link.wait_for(timeout=120_000)
            page.locator("#result img").first.wait_for(timeout=30_000)
            with page.expect_download(timeout=30_000) as download_info:
                link.click()
            saved = tmp_path / "downloaded.png"
            download_info.value.save_as(saved)
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        finally:
            browser.close()
    with Image.open(PORTRAIT) as photo, Image.open(saved) as downloaded:
        assert downloaded.mode == "RGBA" and downloaded.size == photo.size
        alpha = np.asarray(downloaded.getchannel("A"))
    assert alpha.min() < 16 and alpha.max() > 240
    assert 0.15 < (alpha > 127).mean() < 0.9
