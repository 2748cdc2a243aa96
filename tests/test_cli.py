from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgremove_plugin import BackgroundRemover
from bgremove_plugin.cli import main

from .conftest import PORTRAIT


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    small = Image.open(PORTRAIT).resize((96, 96))
    small.save(folder / "a.jpg")
    small.save(folder / "nested" / "b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not picked up")
    return folder


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_get_the_mode_the_umask_gives_new_files(tiny_weights: Path, tmp_path: Path, umask: int, mode: int) -> None:
    out = tmp_path / "cut.png"
    previous = os.umask(umask)
    try:
        assert main([str(PORTRAIT), "-o", str(out), "--model", str(tiny_weights), "--device", "cpu", "--refine", "none"]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_one_file_to_one_output(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "cut.png"
    assert main([str(PORTRAIT), "-o", str(out), "--model", str(tiny_weights), "--device", "cpu"]) == 0
    result = Image.open(out)
    assert result.mode == "RGBA" and result.size == (512, 512)
    plain = tmp_path / "plain.png"
    assert main([str(PORTRAIT), "-o", str(plain), "--model", str(tiny_weights), "--device", "cpu", "--refine", "none"]) == 0
    assert Image.open(plain).size == (512, 512)
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(result))
    np.testing.assert_array_equal(np.asarray(result)[..., :3], np.asarray(Image.open(PORTRAIT).convert("RGB")))
    clean = tmp_path / "clean.png"
    assert main([str(PORTRAIT), "-o", str(clean), "--model", str(tiny_weights), "--device", "cpu", "--decontaminate"]) == 0
    assert not np.array_equal(np.asarray(Image.open(clean))[..., :3], np.asarray(result)[..., :3])


def test_folder_with_a_corrupt_file_keeps_going(tiny_weights: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    status = main([str(photos), "-o", str(out), "--model", str(tiny_weights), "--device", "cpu"])
    assert status == 1
    assert Image.open(out / "a.png").mode == "RGBA"
    assert Image.open(out / "nested" / "b.png").size == (96, 96)
    assert not (out / "broken.png").exists()
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "1 of 3" in err
    assert not list(out.rglob("*.tmp")), "temporary files are cleaned up"


def test_existing_outputs_and_inputs_are_never_overwritten(tiny_weights: Path, photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = photos / "nested" / "b.png"
    before = source.read_bytes()
    status = main([str(source), "-o", str(source), "--model", str(tiny_weights), "--device", "cpu"])
    assert status == 1 and source.read_bytes() == before
    assert "refusing to write over an input" in capsys.readouterr().err

    target = photos.parent / "existing.png"
    target.write_bytes(b"keep me")
    # Skipped, not failed: running a job again finishes what is missing.
    assert main([str(photos / "a.jpg"), "-o", str(target), "--model", str(tiny_weights), "--device", "cpu"]) == 0
    assert target.read_bytes() == b"keep me" and "exists, skipped" in capsys.readouterr().err
    assert main([str(photos / "a.jpg"), "-o", str(target), "--overwrite", "--model", str(tiny_weights), "--device", "cpu"]) == 0
    assert Image.open(target).mode == "RGBA"


def test_default_output_lands_next_to_the_input(tiny_weights: Path, photos: Path) -> None:
    assert main([str(photos / "a.jpg"), "--model", str(tiny_weights), "--device", "cpu"]) == 0
    assert (photos / "a-nobg.png").exists()


def test_jpeg_needs_a_background(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cut.jpg"
    assert main([str(PORTRAIT), "-o", str(out), "--model", str(tiny_weights)]) == 2
    assert "--background" in capsys.readouterr().err
    assert main([str(PORTRAIT), "-o", str(out), "--background", "white", "--model", str(tiny_weights), "--device", "cpu"]) == 0
    assert Image.open(out).format == "JPEG"


def test_mask_mode_and_glob(tiny_weights: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    status = main([str(photos), "-o", str(out), "--glob", "*.png", "--mask", "--threshold", "0.5", "--model", str(tiny_weights), "--device", "cpu"])
    assert status == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["nested/b.png"]
    assert set(np.unique(np.asarray(Image.open(out / "nested" / "b.png")))) <= {0, 255}


def test_installed_console_script_with_stdin_and_help(tiny_weights: Path) -> None:
    exe = shutil.which("bgremove")
    if exe is None:
        pytest.skip("package not installed (pip install -e .): no bgremove console script")
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "examples:" in help_text
    out = subprocess.run(
        [exe, "-", "--model", str(tiny_weights), "--device", "cpu"], input=PORTRAIT.read_bytes(), capture_output=True, check=True
    ).stdout
    assert out.startswith(b"\x89PNG")


def test_module_entry_point_runs(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.webp"
    subprocess.run(
        [sys.executable, "-m", "bgremove_plugin.cli", str(PORTRAIT), "-o", str(out), "--model", str(tiny_weights), "--device", "cpu"],
        check=True,
    )
    assert Image.open(out).mode == "RGBA"


def test_unreadable_background_image_is_a_usage_error(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "backdrop.png"
    bad.write_bytes(b"nope")
    status = main([str(PORTRAIT), "-o", str(tmp_path / "o.png"), "--background", str(bad), "--model", str(tiny_weights)])
    assert status == 2 and "backdrop.png" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_backend_and_precision_options_select_the_engine(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masks = {}
    for backend, precision in (("torch", "float32"), ("onnx", "float32"), ("torch", "bfloat16")):
        out = tmp_path / f"{backend}-{precision}.png"
        args = [str(PORTRAIT), "-o", str(out), "--model", str(tiny_weights), "--device", "cpu", "--mask"]
        assert main([*args, "--backend", backend, "--precision", precision]) == 0
        masks[backend, precision] = np.asarray(Image.open(out), dtype=np.int16)
    assert np.abs(masks["torch", "float32"] - masks["onnx", "float32"]).max() <= 1
    bfloat16_change = np.abs(masks["torch", "bfloat16"] - masks["torch", "float32"])
    assert bfloat16_change.max() > 0 and bfloat16_change.mean() < 2.0
    for bad in (["--backend", "tensorrt"], ["--precision", "float16"]):
        with pytest.raises(SystemExit) as usage:
            main([str(PORTRAIT), *bad])
        assert usage.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_matting_refinement_from_the_command_line(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "matted.png"
    small = tmp_path / "small.png"
    Image.open(PORTRAIT).resize((128, 128)).save(small)
    assert main([str(small), "-o", str(out), "--model", str(tiny_weights), "--device", "cpu", "--refine", "matting"]) == 0
    result = np.asarray(Image.open(out))
    remover = BackgroundRemover(tiny_weights, device="cpu")
    np.testing.assert_array_equal(result, np.asarray(remover.remove(small, refine="matting")))
    assert not np.array_equal(result, np.asarray(remover.remove(small, refine="guided")))
