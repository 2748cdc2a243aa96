"""The folder CLI on Ray (``--engine ray``), on a local Ray started by the test: the local CLI's promises."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from bgremove_plugin import BackgroundRemover
from bgremove_plugin.cli import main
from bgremove_plugin.ray_engine import plan

from .conftest import PORTRAIT


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    portrait = Image.open(PORTRAIT).convert("RGB")
    portrait.resize((96, 80)).save(folder / "a.jpg")
    portrait.resize((64, 64)).save(folder / "nested" / "b.png")
    portrait.rotate(90).resize((72, 72)).save(folder / "c.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not picked up")
    return folder


def test_the_plan_mirrors_the_local_layout_and_never_targets_an_input(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    planned = plan([str(photos)], str(out), pattern="*", suffix=".png", overwrite=False)
    assert planned.jobs == {
        str(photos / name): str(out / target) for name, target in
        (("a.jpg", "a.png"), ("broken.jpg", "broken.png"), ("c.jpg", "c.png"), ("nested/b.png", "nested/b.png"))
    }
    planned = plan([str(photos / "nested" / "b.png")], str(photos / "nested"), pattern="*", suffix=".png", overwrite=True)
    assert planned.jobs == {} and "refusing to write over an input" in planned.problems[0]


def test_a_folder_on_ray_gives_the_local_cutouts_reports_the_bad_photo_and_resumes(
    local_ray: None, photos: Path, tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = [str(photos), "-o", str(out), "--engine", "ray", "--concurrency", "1", "--model", str(tiny_weights),
            "--device", "cpu"]
    assert main(args) == 1  # the broken photo failed; the others are written
    err = capsys.readouterr().err
    assert "3 written, 0 skipped, 1 failed" in err and f"failed: {photos / 'broken.jpg'}" in err
    remover = BackgroundRemover(tiny_weights, device="cpu")
    for source, target in (("a.jpg", "a.png"), ("c.jpg", "c.png"), ("nested/b.png", "nested/b.png")):
        expected = np.asarray(remover.remove(photos / source))
        np.testing.assert_array_equal(np.asarray(Image.open(out / target)), expected)
        assert (os.stat(out / target).st_mode & 0o777) == 0o666 & ~_umask()
    assert not (out / "broken.png").exists() and not (out / "notes.png").exists()

    # Run again: what exists is skipped and left as it was; only the broken photo is tried (and fails) again.
    (out / "a.png").write_bytes(b"kept")
    (out / "c.png").unlink()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 written, 2 skipped, 1 failed" in err and (out / "a.png").read_bytes() == b"kept"
    assert (out / "c.png").exists()
    (photos / "broken.jpg").unlink()
    assert main([*args, "--overwrite"]) == 0
    assert "3 written, 0 skipped, 0 failed" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), np.asarray(remover.remove(photos / "a.jpg")))


def test_ray_needs_an_output_location(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(photos), "--engine", "ray"]) == 2
    assert "--engine ray needs -o OUTPUT" in capsys.readouterr().err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
