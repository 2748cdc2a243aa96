"""Where a training epoch's time goes: the data loaders alone, the optimiser steps alone, and validation.

Run: PYTHONPATH=. python benchmarks/train_throughput.py --run-dir train/runs/coco-fcdn56 [--device cuda]
     [--data-root data_cache] [--set num_workers=14 --set batch_size=32 ...]
It builds the run's trainer from its config.json (random weights: the timings do not depend on them),
then prints samples per second for each part. An epoch cannot run faster than its slowest part; on an
H200 (2026-11-26) the whole epoch ran at about 310 samples/s, which this splits up.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bgremove_plugin.hub import resolve_device
from train.config import apply_overrides, config_from_dict
from train.sources import data_root
from train.trainer import Trainer


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _print_top_operators(trainer: Trainer, images: torch.Tensor, masks: torch.Tensor, device: torch.device, count: int) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(5):
            trainer.train_step(images, masks)
        _synchronize(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=count, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run folder holding config.json")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="as train.train's --set")
    parser.add_argument("--batches", type=int, default=20, help="batches timed for the loaders and for the steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--kernels", type=int, default=0, metavar="N",
                        help="then profile a few steps and list the N operators that take the most device time")
    parser.add_argument("--no-validation", action="store_true",
                        help="skip timing validation (it does not depend on --set compile; about 16 s on an H200)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = apply_overrides(config_from_dict(json.loads((args.run_dir / "config.json").read_text())), args.set)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    # The trainer is only timed, never run: nothing is written to its run folder.
    trainer = Trainer(cfg, Path(tempfile.mkdtemp(prefix="train_throughput-")), device, args.data_root or data_root())
    print(f"data loaded in {time.perf_counter() - started:.1f} s; {cfg.batch_size} per batch, "
          f"{cfg.num_workers} workers, {cfg.augment.patch_size} px crops, device {device}")

    samples = args.batches * cfg.batch_size
    started = time.perf_counter()
    batches = iter(trainer.epoch_loader(0, samples + cfg.batch_size))
    first = next(batches)
    startup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    loading = time.perf_counter() - started
    print(f"loaders: first batch after {startup:.2f} s, then {samples / loading:.0f} samples/s")

    trainer.model.train()
    images, masks = first
    started = time.perf_counter()
    for _ in range(3):  # cuDNN's algorithm search, the allocator's first growth and, with --set compile=..., compiling
        trainer.train_step(images, masks)
    _synchronize(device)
    print(f"first 3 steps (warm-up{', compile' if cfg.compile else ''}): {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    for _ in range(args.batches):
        trainer.train_step(images, masks)
    _synchronize(device)
    stepping = time.perf_counter() - started
    # Three significant digits: on 2 CPU cores FC-DenseNet103 trains at under one sample per second.
    print(f"steps (one batch reused, no loading): {samples / stepping:.3g} samples/s, {stepping / args.batches:.2f} s per step")
    if args.kernels:
        _print_top_operators(trainer, images, masks, device, args.kernels)

    if args.no_validation:
        return
    started = time.perf_counter()
    trainer.validate()
    _synchronize(device)
    print(f"validation ({len(trainer.val.images)} + {len(trainer.val_empty.images)} photos, BatchNorm "
          f"recalibrated on {len(trainer.calibration_images)}): {time.perf_counter() - started:.1f} s per epoch")


if __name__ == "__main__":
    main()
