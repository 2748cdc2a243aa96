"""The training loop: one :class:`Trainer` per run folder, its validation with re-estimated BatchNorm, and
the choice of ``best.pt``."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bgremove_plugin.hub import build_from_folder
from bgremove_plugin.model import TiramisuNet
from bgremove_plugin.transforms import person_probability, prepare_batch, unpad_and_resize

from .checkpoint import LOCAL_FULL_CHECKPOINT, rng_state, set_rng_state, weights_for_checkpoint
from .config import TrainConfig, model_kwargs
from .data import IGNORE_LABEL, EpochSampler, LoadedSet, TrainingStream, load_backgrounds, load_set
from .datasets import REPO, background_paths, source_splits
from .metrics import person_iou
from .sources import SPLIT_DIR, Sample, object_boxes

log = logging.getLogger("train")


def save_grid(path: Path, images: list[np.ndarray], truths: list[np.ndarray], probs: list[np.ndarray]) -> None:
    """One row per validation image: photo | ground truth | predicted probability."""
    height = 160
    rows = []
    for image, truth, prob in zip(images, truths, probs):
        width = round(image.shape[1] * height / image.shape[0])
        tiles = [
            Image.fromarray(image).resize((width, height)),
            Image.fromarray(truth).convert("RGB").resize((width, height)),
            Image.fromarray((prob * 255).astype(np.uint8)).convert("RGB").resize((width, height)),
        ]
        rows.append(np.concatenate([np.asarray(t) for t in tiles], axis=1))
    widest = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, widest - r.shape[1]), (0, 0))) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


@contextlib.contextmanager
def without_cudnn_search() -> Iterator[None]:
    """cuDNN's algorithm search off for the duration. Whole photos come in many padded shapes, each a new
    search: the first validation of every GPU session took 14-27 s where the later ones took 2
    (gpu-fcdn56's metrics.jsonl), which is what a search per shape would cost."""
    searching = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = searching


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images: list[np.ndarray], device: torch.device, batch_size: int = 8) -> list[np.ndarray]:
    """Person probability at each image's own size, through the same preprocessing as the package."""
    net = cast(TiramisuNet, model)
    probs: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = [Image.fromarray(a) for a in images[start : start + batch_size]]
        batch, valid = prepare_batch(chunk, long_side=net.input_size, multiple=net.pad_multiple, mean=net.mean, std=net.std)
        logits = model(batch.to(device))
        person = person_probability(logits)
        for i, image in enumerate(chunk):
            probs.append(unpad_and_resize(person[i], valid[i], image.size))
    return probs


def recalibrate_batchnorm(model: torch.nn.Module, images: list[np.ndarray], device: torch.device, batch_size: int = 8) -> TiramisuNet:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on clean, whole photos.

    Training statistics come from augmented crops with padding and from layers seen through dropout;
    at inference neither is there. Averaging the statistics over real photos at the working resolution
    (dropout off) fixes that mismatch: on the CCP validation split it raised IoU from 0.69 to 0.77.
    """
    net = cast(TiramisuNet, copy.deepcopy(model))
    net.eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over all calibration batches
            module.train()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = [Image.fromarray(a) for a in images[start : start + batch_size]]
            batch, _ = prepare_batch(chunk, long_side=net.input_size, multiple=net.pad_multiple, mean=net.mean, std=net.std)
            net(batch.to(device))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return net.eval()


def calibration_shares(sizes: list[int], weights: list[float], total: int) -> list[int]:
    """How many images of each source re-estimate BatchNorm: each source in its share of training draws."""
    draws = np.array(sizes, dtype=np.float64) * np.array(weights, dtype=np.float64)
    return [int(n) for n in np.round(draws / draws.sum() * total)]


def calibration_images(cfg: TrainConfig, root: Path, split_dir: Path = SPLIT_DIR) -> list[np.ndarray]:
    """The clean training photos a run re-estimates BatchNorm on (the same ones ``Trainer`` uses)."""
    splits = [source_splits(s, cfg.split_seed, root, split_dir) for s in cfg.sources]
    shares = calibration_shares([len(sp["train"]) for sp in splits], [s.weight for s in cfg.sources], cfg.bn_calibration_images)
    return [image for sp, n in zip(splits, shares) for image in load_set(sp["train"][:n], long_side=cfg.cache_long_side).images]




class Trainer:
    def __init__(
        self, cfg: TrainConfig, run_dir: Path, device: torch.device, root: Path, split_dir: Path = SPLIT_DIR
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = device
        torch.manual_seed(cfg.seed)
        self.model = TiramisuNet(**model_kwargs(cfg)).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.step_model = cast(torch.nn.Module, torch.compile(self.model, backend=cfg.compile)) if cfg.compile else self.model
        params = self.model.parameters()
        if cfg.optimizer == "rmsprop":
            self.optimizer: torch.optim.Optimizer = torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            raise ValueError(f"optimizer must be 'rmsprop' or 'adamw', got {cfg.optimizer!r}")
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=cfg.lr_decay)
        self.warmup_steps_left = 0
        if cfg.init_weights:
            self.model.load_state_dict(build_from_folder(REPO / cfg.init_weights).state_dict(), strict=True)
            self.warmup_steps_left = cfg.resume_warmup_steps
        self.epoch = 0
        self.best_iou = -1.0
        self.samples_seen = 0
        self.train_seconds = 0.0

        train_sets: list[LoadedSet] = []
        val_samples: list[Sample] = []
        empty_val_samples: list[Sample] = []
        val_sources: list[str] = []
        for source in cfg.sources:
            splits = source_splits(source, cfg.split_seed, root, split_dir)
            train_set = load_set(
                splits["train"], long_side=cfg.cache_long_side, name=source.path, weight=source.weight,
                ignore_band=source.ignore_band,
                ignore_dir=REPO / source.ignore_regions / "masks" if source.ignore_regions else None,
            )
            train_set.away_windows = source.away_windows
            if cfg.augment.object_closeup_prob > 0:
                boxes = object_boxes(root / source.path)
                train_set.object_boxes = [boxes.get(stem, []) for stem in train_set.stems]
            train_sets.append(train_set)
            if source.validate:
                val_samples += splits["val"]
                val_sources += [source.path] * len(splits["val"])
            if source.empty_only:
                empty_val_samples += splits["val"]
        if cfg.val_limit:
            val_samples = val_samples[: cfg.val_limit]
        self.val_sources = val_sources[: len(val_samples)]
        """The source of each validation photo, so that metrics.jsonl can say which set moved."""
        self.val_iou_by_source: dict[str, float] = {}
        self.val = load_set(val_samples, long_side=cfg.cache_long_side, name="val")
        self.val_empty = load_set(empty_val_samples, long_side=cfg.cache_long_side, name="val_empty")
        # The val set's size is part of the rule: a best measured on fewer photos is not comparable.
        self.selection_rule = f"val_iou on {len(val_samples)} photos if empty_alpha < {cfg.max_empty_alpha}"
        self.sampler = EpochSampler(train_sets, cfg.seed)
        # BatchNorm statistics come from every source in its training share, so portraits count too.
        shares = calibration_shares([len(s.images) for s in train_sets], [s.weight for s in train_sets], cfg.bn_calibration_images)
        self.calibration_images = [image for s, n in zip(train_sets, shares) for image in s.images[:n]]
        self.backgrounds = load_backgrounds(
            [p for folder in cfg.backgrounds for p in background_paths(root / folder)], cfg.cache_long_side
        )
        log.info("train images %s, val %d, no-person val %d, backgrounds %d", [len(s.images) for s in train_sets], len(self.val.images), len(self.val_empty.images), len(self.backgrounds))
        if cfg.augment.object_closeup_prob > 0:
            log.info("photos with object boxes for close-ups %s", [sum(map(bool, s.object_boxes)) for s in train_sets])

    # checkpoint -------------------------------------------------------------------------------
    def state(self, *, slim: bool) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.cfg),
            "model": weights_for_checkpoint(self.model, slim=slim),
            "optimizer": None if slim else self.optimizer.state_dict(),
            "lr": [group["lr"] for group in self.optimizer.param_groups],
            "warmup_steps_left": self.warmup_steps_left,
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "best_iou": self.best_iou,
            "selection_rule": self.selection_rule,
            "samples_seen": self.samples_seen,
            "train_seconds": self.train_seconds,
            "rng": rng_state(),
        }

    def load(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        if checkpoint["optimizer"] is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.warmup_steps_left = checkpoint.get("warmup_steps_left", 0)
        else:
            # A slim checkpoint: fresh moments, the saved rate, and a warm-up (``resume_warmup_steps``).
            for group, lr in zip(self.optimizer.param_groups, checkpoint["lr"]):
                group["lr"] = lr
            self.warmup_steps_left = self.cfg.resume_warmup_steps
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        # The saved scheduler carries its own gamma; a --set lr_decay on resume must win over it.
        self.scheduler.gamma = self.cfg.lr_decay
        self.epoch = checkpoint["epoch"]
        # A best chosen under another rule (older runs: CCP validation only) must not block better-rounded weights.
        if checkpoint.get("selection_rule") == self.selection_rule:
            self.best_iou = checkpoint["best_iou"]
        self.samples_seen = checkpoint["samples_seen"]
        self.train_seconds = checkpoint["train_seconds"]
        set_rng_state(checkpoint["rng"])

    def _atomic_save(self, obj: Any, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(obj, tmp)
        tmp.replace(path)

    # loop -------------------------------------------------------------------------------------
    def epoch_loader(self, epoch: int, samples: int | None = None) -> torch.utils.data.DataLoader:
        """The batches of one epoch (its first ``samples`` draws, by default all of them)."""
        cfg = self.cfg
        stream = TrainingStream(self.sampler, epoch, samples or cfg.samples_per_epoch, cfg.augment, self.backgrounds)
        return torch.utils.data.DataLoader(
            stream, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
            drop_last=True, pin_memory=self.device.type == "cuda", persistent_workers=False,
        )

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch from :meth:`epoch_loader`; returns the loss, still on the device."""
        use_amp = self.cfg.amp if self.device.type == "cuda" else self.cfg.amp_cpu
        images = images.to(self.device, non_blocking=True).to(memory_format=torch.channels_last)
        masks = masks.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = self.step_model(images)
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_LABEL)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.warmup_steps_left > 0:
            # Scaled for this step only, so the per-epoch schedule keeps its own rate.
            scale = 1 - self.warmup_steps_left / (max(self.cfg.resume_warmup_steps, self.warmup_steps_left) + 1)
            scheduled = [group["lr"] for group in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["lr"] *= scale
            self.optimizer.step()
            for group, lr in zip(self.optimizer.param_groups, scheduled):
                group["lr"] = lr
            self.warmup_steps_left -= 1
        else:
            self.optimizer.step()
        return loss.detach()

    def train_epoch(self) -> tuple[float, float]:
        """Mean training loss and the seconds spent waiting for batches: on a GPU, where an epoch once took
        ten times longer than its arithmetic, this says whether the data loaders or the steps are the limit."""
        self.model.train()
        # Kept on the device: a .item() per step would make the CPU wait for the GPU before queueing the next.
        losses: list[torch.Tensor] = []
        data_wait = 0.0
        batches = iter(self.epoch_loader(self.epoch))
        while True:
            waited_from = time.perf_counter()
            batch = next(batches, None)
            data_wait += time.perf_counter() - waited_from
            if batch is None:
                break
            images, masks = batch
            losses.append(self.train_step(images, masks))
            self.samples_seen += images.shape[0]
        self.scheduler.step()
        return float(torch.stack(losses).mean()), data_wait

    def validate(self) -> tuple[float, float, list[np.ndarray], TiramisuNet]:
        """Validation IoU and no-person mean probability of the weights with recalibrated BatchNorm, which is
        what ships. The mean probability is 0 when no source is empty-only."""
        with without_cudnn_search():
            model = recalibrate_batchnorm(self.model, self.calibration_images, self.device)
            probs = predict_probabilities(model, self.val.images, self.device)
            empty_probs = predict_probabilities(model, self.val_empty.images, self.device)
        ious = [person_iou(p, m) for p, m in zip(probs, self.val.masks)]
        self.val_iou_by_source = {
            name: round(float(np.mean([iou for iou, of in zip(ious, self.val_sources) if of == name])), 5)
            for name in dict.fromkeys(self.val_sources)
        }
        empty_alpha = float(np.mean([p.mean() for p in empty_probs])) if empty_probs else 0.0
        return float(np.mean(ious)), empty_alpha, probs, model

    def run(self, max_minutes: float) -> None:
        cfg = self.cfg
        started = time.time()
        metrics_path = self.run_dir / "metrics.jsonl"
        while self.epoch < cfg.epochs:
            epoch_start = time.time()
            loss, data_wait = self.train_epoch()
            validate_start = time.time()
            val_iou, empty_alpha, probs, calibrated = self.validate()
            validate_seconds = time.time() - validate_start
            self.epoch += 1
            elapsed = time.time() - epoch_start
            self.train_seconds += elapsed
            lr = self.optimizer.param_groups[0]["lr"]
            row = {
                "epoch": self.epoch, "samples_seen": self.samples_seen, "train_loss": round(loss, 5),
                "val_iou": round(val_iou, 5), "val_empty_alpha": round(empty_alpha, 4), "lr": lr, "epoch_seconds": round(elapsed, 1),
                "data_wait_seconds": round(data_wait, 1), "validate_seconds": round(validate_seconds, 1),
                "train_seconds_total": round(self.train_seconds, 1), "device": str(self.device),
                "val_iou_by_source": self.val_iou_by_source,
            }
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            n = cfg.grid_images
            save_grid(self.run_dir / "grids" / f"epoch_{self.epoch:03d}.png", self.val.images[:n], self.val.masks[:n], probs[:n])
            if val_iou > self.best_iou and empty_alpha < cfg.max_empty_alpha:
                self.best_iou = val_iou
                self._atomic_save(
                    {"model_kwargs": model_kwargs(cfg), "state_dict": weights_for_checkpoint(calibrated.float(), slim=cfg.slim_checkpoint),
                     "epoch": self.epoch, "val_iou": val_iou, "val_empty_alpha": empty_alpha,
                     "samples_seen": self.samples_seen},
                    self.run_dir / "best.pt",
                )
            if cfg.slim_checkpoint:
                # Written before last.pt, so a kill between the two leaves a full state that no longer matches.
                self._atomic_save(self.state(slim=False), self.run_dir / LOCAL_FULL_CHECKPOINT)
            self._atomic_save(self.state(slim=cfg.slim_checkpoint), self.run_dir / "last.pt")
            log.info("epoch %d loss %.4f val IoU %.4f no-person alpha %.3f (best %.4f) %.0fs",
                     self.epoch, loss, val_iou, empty_alpha, self.best_iou, elapsed)
            if (time.time() - started) / 60 + elapsed / 60 > max_minutes:
                log.info("stopping after epoch %d: --max-minutes %.0f reached; resume with --resume", self.epoch, max_minutes)
                break
