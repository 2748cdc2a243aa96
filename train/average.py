"""Average the weights of several checkpoints of one run, then re-estimate BatchNorm on clean photos.

Late checkpoints of a run differ: coco128 people moves by 0.01-0.03 from one epoch to the next, so picking
one epoch also picks its luck, and an average of checkpoints that lie in one basin (stochastic weight
averaging, after the fact) may keep what they share. For gpu-fcdn56 it did not: none of the averages
measured beat epoch 140 (docs/experiments.md, "Averaging and extrapolating checkpoints"). BatchNorm statistics do not
average linearly with the weights, so they are re-estimated on the run's clean training photos, as
``best.pt`` does.

Checkpoints are files or ``REV:PATH`` (a committed version, read with ``git show``): every resumable
``last.pt`` ever committed is one. The output is a run folder that ``train.candidate`` measures::

    python -m train.average --run-dir train/runs/gpu-fcdn56 --out train/runs/average-140-149 \\
        fe8c5a7:train/runs/gpu-fcdn56/best.pt b5d856d:train/runs/gpu-fcdn56/last.pt
    python -m train.candidate --run-dir train/runs/average-140-149 --out /tmp/avg

``--out`` receives ``best.pt`` (the average), the run's ``config.json`` (validation and threshold
calibration read it) and ``averaged.json`` (what was averaged, from which commits).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bgremove_plugin.model import TiramisuNet

from .export import _weights_from_training_state
from .sources import SPLIT_DIR, data_root
from .train import REPO, calibration_images, config_from_dict, recalibrate_batchnorm

log = logging.getLogger("train.average")


def read_checkpoint(spec: str, *, repo: Path = REPO) -> dict[str, Any]:
    """A checkpoint in ``best.pt``'s layout from a path or ``REV:PATH`` (a version committed to ``repo``);
    a resumable training state (``last.pt``) gives its raw model weights: the runs this is for keep no EMA."""
    rev, sep, path = spec.rpartition(":")
    if not sep:
        return _read_file(Path(spec))
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / Path(path).name
        try:
            blob = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, check=True).stdout
        except subprocess.CalledProcessError as error:
            raise FileNotFoundError(f"{spec}: git show failed: {error.stderr.decode().strip()}") from error
        copy.write_bytes(blob)
        return _read_file(copy)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        saved: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # A resumable training state: its RNG states need the full unpickler (our own files only).
        return _weights_from_training_state(path, "model")
    return saved


def checked_coefficients(count: int, coefficients: Sequence[float] | None) -> list[float]:
    """One coefficient per checkpoint, summing to 1 (equal ones when None)."""
    if count == 0:
        raise ValueError("nothing to average")
    weights = [1.0 / count] * count if coefficients is None else [float(c) for c in coefficients]
    if len(weights) != count:
        raise ValueError(f"{len(weights)} coefficients for {count} checkpoints: give one each")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"coefficients sum to {sum(weights):g}: they must sum to 1 to keep the weights' scale")
    return weights


def average_state_dicts(
    state_dicts: Sequence[dict[str, torch.Tensor]], coefficients: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """The weighted sum of floating-point tensors (``coefficients`` sum to 1; equal ones by default; a
    negative one extrapolates along the path between checkpoints); integer ones (BatchNorm's batch
    counters) are taken from the first, since BatchNorm is re-estimated afterwards anyway."""
    weights = checked_coefficients(len(state_dicts), coefficients)
    keys = list(state_dicts[0])
    for other in state_dicts[1:]:
        if list(other) != keys:
            raise ValueError("the checkpoints hold different layers: they are not of one architecture")
    averaged = {}
    for key in keys:
        tensors = [sd[key] for sd in state_dicts]
        if tensors[0].is_floating_point():
            averaged[key] = sum((w * t.float() for w, t in zip(weights, tensors)), torch.zeros_like(tensors[0], dtype=torch.float32))
        else:
            averaged[key] = tensors[0].clone()
    return averaged


def average_checkpoints(
    specs: Sequence[str],
    run_dir: Path,
    out: Path,
    *,
    root: Path,
    coefficients: Sequence[float] | None = None,
    split_dir: Path = SPLIT_DIR,
    repo: Path = REPO,
) -> dict[str, Any]:
    """Write ``out/best.pt`` averaged from ``specs`` with BatchNorm re-estimated on the photos that
    ``run_dir/config.json`` trains on; returns what ``averaged.json`` records."""
    checkpoints = [read_checkpoint(spec, repo=repo) for spec in specs]
    kwargs = checkpoints[0]["model_kwargs"]
    for spec, checkpoint in zip(specs, checkpoints):
        if checkpoint["model_kwargs"] != kwargs:
            raise ValueError(f"{spec} was built with other architecture arguments than {specs[0]}")
    model = TiramisuNet(**kwargs)
    model.load_state_dict(average_state_dicts([c["state_dict"] for c in checkpoints], coefficients), strict=True)
    config_text = (run_dir / "config.json").read_text()
    photos = calibration_images(config_from_dict(json.loads(config_text)), root, split_dir)
    model = recalibrate_batchnorm(model, photos, torch.device("cpu"))
    record = {
        "averaged_from": [
            {"checkpoint": spec, "epoch": c["epoch"], "samples_seen": c["samples_seen"], "coefficient": w}
            for spec, c, w in zip(specs, checkpoints, checked_coefficients(len(specs), coefficients))
        ],
        "batchnorm_photos": len(photos),
        "run": run_dir.name,
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model_kwargs": kwargs, "state_dict": model.state_dict(),
         "epoch": max(c["epoch"] for c in checkpoints), "val_iou": None,
         "samples_seen": max(c["samples_seen"] for c in checkpoints)},
        out / "best.pt",
    )
    shutil.copyfile(run_dir / "config.json", out / "config.json")
    (out / "averaged.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files or REV:PATH, at least two")
    parser.add_argument("--run-dir", type=Path, required=True, help="the run whose config.json names the photos")
    parser.add_argument("--out", type=Path, required=True, help="a new run folder for train.candidate")
    parser.add_argument("--coefficients", type=float, nargs="+", default=None,
                        help="one per checkpoint, summing to 1 (default: equal); e.g. 1.5 -0.5 extrapolates")
    parser.add_argument("--data-root", type=Path, default=None, help="default: $BGREMOVE_DATA or ../shared/data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if len(args.checkpoints) < 2:
        parser.error("give at least two checkpoints to average")
    record = average_checkpoints(
        args.checkpoints, args.run_dir, args.out, root=args.data_root or data_root(), coefficients=args.coefficients
    )
    epochs = ", ".join(str(item["epoch"]) for item in record["averaged_from"])
    log.info("wrote %s: epochs %s, BatchNorm re-estimated on %d photos", args.out / "best.pt", epochs, record["batchnorm_photos"])


if __name__ == "__main__":
    main()
