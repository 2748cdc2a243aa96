"""Train a TiramisuNet person segmenter; resumable, one folder per run.

Examples:
    python -m train.train --config coco-fcdn56 --run-dir train/runs/coco-fcdn56 --max-minutes 120
    python -m train.train --run-dir train/runs/coco-fcdn56 --resume --max-minutes 120
    python -m train.train --run-dir train/runs/coco-fcdn56 --resume --device cuda --set compile='"inductor"'
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import torch

from bgremove_plugin.hub import resolve_device

from .checkpoint import git_commit, resume_checkpoint
from .config import NAMED_CONFIGS, apply_overrides, config_edits, config_from_dict
from .sources import SPLIT_DIR, data_root
from .trainer import Trainer

log = logging.getLogger("train")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cpu-fcdn56", help=f"named config: {sorted(NAMED_CONFIGS)}")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    parser.add_argument("--epochs", type=int, help="total epochs to reach (overrides the config; extends a resumed run)")
    parser.add_argument("--max-minutes", type=float, default=float("inf"), help="stop cleanly after the epoch that passes this")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-root", type=Path, default=None, help="default: $BGREMOVE_DATA or ../shared/data")
    parser.add_argument("--split-dir", type=Path, default=SPLIT_DIR, help="where split lists are read or written")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a config field, e.g. --set samples_per_epoch=16 --set augment.patch_size=64")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    run_dir: Path = args.run_dir
    checkpoint = None
    edits: list[str] = []
    if args.resume:
        checkpoint = resume_checkpoint(run_dir)
        saved = config_from_dict(checkpoint["config"])
        # The run folder's config.json is what people read and edit (a source marked `calibrate`), and what
        # export reads: on resume it wins over the copy inside the checkpoint, so an edit is never silently
        # undone by the rewrite below.
        written = run_dir / "config.json"
        cfg = config_from_dict(json.loads(written.read_text())) if written.exists() else saved
        edits = config_edits(saved, cfg)
        if edits:
            log.info("config.json differs from the checkpoint's config in %s: config.json wins", ", ".join(edits))
    else:
        if (run_dir / "last.pt").exists():
            raise SystemExit(f"{run_dir} already holds a run: pass --resume to continue it or pick a new --run-dir")
        cfg = copy.deepcopy(NAMED_CONFIGS[args.config])
    if args.set:
        # On --resume an override changes the schedule from here on; sessions.jsonl records it.
        cfg = apply_overrides(cfg, args.set)
    if args.epochs:
        cfg.epochs = args.epochs

    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if device.type == "cuda":
        # Training crops have one fixed shape, so cuDNN's per-shape algorithm search pays for itself.
        torch.backends.cudnn.benchmark = True
    root = args.data_root or data_root()
    trainer = Trainer(cfg, run_dir, device, root, args.split_dir)
    if checkpoint is not None:
        trainer.load(checkpoint)
        if any(item.partition("=")[0] == "lr" for item in args.set):
            # A warm restart: the saved optimiser state carries the decayed rate, so set it explicitly.
            for group in trainer.optimizer.param_groups:
                group["lr"] = cfg.lr
            trainer.scheduler.base_lrs = [cfg.lr] * len(trainer.optimizer.param_groups)
        log.info("resumed %s at epoch %d (%d samples seen)", run_dir, trainer.epoch, trainer.samples_seen)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    with (run_dir / "sessions.jsonl").open("a") as f:
        f.write(json.dumps({
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(), "start_epoch": trainer.epoch,
            "device": str(device), "torch": torch.__version__, "host": platform.node(), "threads": torch.get_num_threads(),
            # The same config can train on another copy of the data (train.cache's downscaled copy): say which.
            "overrides": args.set, "config_edits": edits, "data_root": str(root),
        }) + "\n")
    trainer.run(args.max_minutes)


if __name__ == "__main__":
    main()
