"""Turn a run's best checkpoint into a ``save_pretrained`` folder (config.json + model.safetensors).

Examples:
    python -m train.export --run-dir train/runs/cpu-fcdn56 --out bgremove_plugin/weights --fp16 --onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from bgremove_plugin.hub import build_from_folder
from bgremove_plugin.model import TiramisuNet
from bgremove_plugin.onnx_backend import ONNX_NAME, export_onnx

from .calibrate import best_threshold, shift_person_logit
from .config import SourceConfig, TrainConfig, config_from_dict, model_kwargs
from .data import LoadedSet, load_set
from .datasets import source_splits
from .sources import SPLIT_DIR
from .trainer import calibration_images, predict_probabilities, recalibrate_batchnorm

DEFAULT_ALPHA_RANGE = (0.2, 0.8)
"""Probabilities snapped to alpha 0 / 1. On 80 CCP val photos (epoch-13 weights) it cut the soft mask's
MAE from 0.083 to 0.058 and the share of partial-alpha pixels from 59% to 12%, at the same IoU (the
range is symmetric about 0.5). Narrower ranges lower MAE a little more but harden hair and edges."""


def _weights_from_training_state(path: Path) -> dict[str, Any]:
    """The weights of a resumable ``last.pt``, in the layout ``best.pt`` uses."""
    # Our own resumable checkpoint: it holds RNG states, which need the full unpickler.
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {
        "config": state["config"],
        "model_kwargs": model_kwargs(config_from_dict(state["config"])),
        "state_dict": state["model"],
        "epoch": state["epoch"],
        "val_iou": _logged_val_iou(path.parent / "metrics.jsonl", state["epoch"]),
        "samples_seen": state["samples_seen"],
    }


def _logged_val_iou(metrics: Path, epoch: int) -> float | None:
    """The validation IoU the run logged for ``epoch``: ``last.pt`` does not carry its own."""
    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return next((row["val_iou"] for row in reversed(rows) if row["epoch"] == epoch), None)


def blend_weights(model: TiramisuNet, other: Path, share: float) -> None:
    """Set ``model``'s weights, in place, to ``share`` of themselves plus ``1 - share`` of those in the
    weights folder ``other`` (the same network): a fine-tuned checkpoint blended with the weights it started
    from keeps most of what it learnt and gives back most of what it forgot (WiSE-FT; docs/experiments.md).
    BatchNorm statistics come out meaningless and must be re-estimated."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"the checkpoint's share of a blend must be in (0, 1], got {share}")
    base = build_from_folder(other).state_dict()
    own = model.state_dict()
    if base.keys() != own.keys() or any(base[key].shape != own[key].shape for key in own):
        raise ValueError(f"{other} holds a different network than the checkpoint; only the same one blends")
    model.load_state_dict({
        key: share * value + (1.0 - share) * base[key].to(value.dtype) if value.is_floating_point() else value
        for key, value in own.items()
    })


def _run_config(run_dir: Path) -> TrainConfig:
    """The run folder's config.json (with any edits made between sessions); CCP alone for a folder without one."""
    config_path = run_dir / "config.json"
    if config_path.exists():
        return config_from_dict(json.loads(config_path.read_text()))
    return TrainConfig(sources=[SourceConfig("ccp")])


def _calibrate(model: TiramisuNet, data_root: Path, run_dir: Path, split_dir: Path | None) -> dict[str, object]:
    """Fit the decision threshold on the run's validation photos: those of its sources with people marked
    ``validate`` or ``calibrate``, each source weighing the same, and, as one more group of the same weight,
    those of its ``empty_only`` sources marked ``calibrate`` (:func:`train.calibrate.best_threshold`)."""
    cfg = _run_config(run_dir)
    chosen = [source for source in cfg.sources if (source.validate or source.calibrate) and not source.empty_only]
    empty = [source for source in cfg.sources if source.calibrate and source.empty_only]
    model.eval()
    device = torch.device("cpu")

    def val_set(source: SourceConfig) -> LoadedSet:
        return load_set(source_splits(source, cfg.split_seed, data_root, split_dir or SPLIT_DIR)["val"])

    groups = []
    for source in chosen:
        val = val_set(source)
        groups.append((predict_probabilities(model, val.images, device), val.masks))
    without_people = [p for source in empty for p in predict_probabilities(model, val_set(source).images, device)]
    threshold, score, score_at_half = best_threshold(groups, without_people=without_people)
    shift_person_logit(model, threshold)
    return {
        "threshold": threshold,
        "val_score_at_threshold": round(score, 4),
        "val_score_at_0.5": round(score_at_half, 4),
        "sources": [source.path for source in chosen],
        "photos_without_people": len(without_people),
    }


def export(
    run_dir: Path,
    out: Path,
    *,
    fp16: bool = False,
    checkpoint: str = "best.pt",
    calibrate_on: Path | None = None,
    data_root: Path | None = None,
    split_dir: Path | None = None,
    onnx: bool = False,
    alpha_range: tuple[float, float] = DEFAULT_ALPHA_RANGE,
    blend_with: Path | None = None,
    blend_share: float = 0.5,
) -> dict[str, object]:
    """Write the weights folder and return the checkpoint's metadata (epoch, val IoU, samples seen).

    ``best.pt`` holds the weights that scored best on validation; ``last.pt`` holds the latest training
    state, whose BatchNorm statistics come from augmented crops, so they are re-estimated on the run's clean
    photos (needs ``data_root``) as validation and ``best.pt`` do. ``blend_with`` (a weights folder of the
    same network) mixes the checkpoint with it, ``blend_share`` being the checkpoint's part
    (:func:`blend_weights`; BatchNorm is re-estimated then too). ``onnx`` also writes ``model.onnx`` for the
    ONNX Runtime backend.
    """
    if checkpoint == "last.pt":
        saved = _weights_from_training_state(run_dir / checkpoint)
    else:
        saved = torch.load(run_dir / checkpoint, map_location="cpu", weights_only=True)
    model = TiramisuNet(**{**saved["model_kwargs"], "alpha_range": list(alpha_range)})
    model.load_state_dict(saved["state_dict"], strict=True)
    if blend_with is not None:
        blend_weights(model, blend_with, blend_share)
    if checkpoint == "last.pt" or blend_with is not None:
        if data_root is None:
            raise ValueError("exporting last.pt or a blend re-estimates BatchNorm on the training photos: pass data_root")
        # best.pt does not carry the run's config; last.pt's is the one it trained with.
        cfg = config_from_dict(saved["config"]) if "config" in saved else _run_config(run_dir)
        photos = calibration_images(cfg, data_root, split_dir or SPLIT_DIR)
        model = recalibrate_batchnorm(model, photos, torch.device("cpu"))
    calibration = _calibrate(model, calibrate_on, run_dir, split_dir) if calibrate_on else None
    if fp16:
        # Halves the wheel; load_state_dict casts back to float32 when the package loads it.
        model = model.half()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    info = {key: saved[key] for key in ("epoch", "val_iou", "samples_seen")}
    info["run"] = run_dir.name
    if blend_with is not None:
        info["blend"] = {"with": str(blend_with), "share_of_checkpoint": blend_share}
    if calibration:
        info["calibration"] = calibration
    info["checkpoint"] = checkpoint
    info["dtype"] = "float16" if fp16 else "float32"
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    # The mixin writes a generic README.md; the real card is model_card.md at the repo root.
    (out / "README.md").unlink(missing_ok=True)
    onnx_path = out / ONNX_NAME
    onnx_path.unlink(missing_ok=True)  # never leave a graph of older weights beside new ones
    if onnx:
        # Export what the package will load (fp16 files come back as float32), so the fingerprints match.
        export_onnx(build_from_folder(out), onnx_path)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp16", action="store_true", help="store weights as float16")
    parser.add_argument("--checkpoint", default="best.pt", help="best.pt (default) or last.pt")
    parser.add_argument("--calibrate", action="store_true", help="fit the decision threshold on the run's validation split")
    parser.add_argument("--alpha-range", type=float, nargs=2, default=DEFAULT_ALPHA_RANGE, metavar=("LOW", "HIGH"),
                        help="probabilities at or below LOW give alpha 0, at or above HIGH alpha 1 (default 0.2 0.8)")
    parser.add_argument("--blend-with", type=Path, metavar="FOLDER",
                        help="mix the checkpoint with these weights (the same network; e.g. the ones it was fine-tuned from)")
    parser.add_argument("--blend-share", type=float, default=0.5,
                        help="the checkpoint's part of the --blend-with mix, in (0, 1] (default %(default)s)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (needs bgremove_plugin[onnx])")
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args(argv)
    from .sources import data_root

    calibrate_on = (args.data_root or data_root()) if args.calibrate else None
    root = args.data_root or data_root()
    info = export(
        args.run_dir, args.out, fp16=args.fp16, checkpoint=args.checkpoint,
        calibrate_on=calibrate_on, data_root=root, onnx=args.onnx,
        alpha_range=tuple(args.alpha_range), blend_with=args.blend_with, blend_share=args.blend_share,
    )
    print(json.dumps(info))


if __name__ == "__main__":
    main()
