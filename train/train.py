"""Train a TiramisuNet person segmenter; resumable, one folder per run.

Examples:
    python -m train.train --config cpu-fcdn56 --run-dir train/runs/cpu-fcdn56 --max-minutes 90
    python -m train.train --run-dir train/runs/cpu-fcdn56 --resume --max-minutes 120
    python -m train.train --config original --run-dir train/runs/original --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import os
import platform
import random
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from bgremove_plugin.hub import resolve_device
from bgremove_plugin.model import PRESETS, TiramisuNet
from bgremove_plugin.transforms import person_probability, prepare_batch, unpad_and_resize

from .data import IGNORE_LABEL, AugmentConfig, EpochSampler, LoadedSet, TrainingStream, load_backgrounds, load_set
from .losses import lovasz_softmax
from .metrics import person_iou
from .sources import (
    SPLIT_DIR,
    Sample,
    data_root,
    folder_samples,
    object_boxes,
    object_outlines,
    read_split_list,
    split_samples,
    write_split_lists,
)

log = logging.getLogger("train")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class SourceConfig:
    path: str
    """images/ + masks/ folder, relative to the data root."""
    weight: float = 1.0
    """Sampling weight per image relative to other sources."""
    masks: str | None = None
    """A pseudo-label set for these images (its masks/ and provenance.json), relative to the repository;
    None: the source's own masks/."""
    validate: bool = True
    """Whether its val split joins validation; off for pseudo-labels, which are not ground truth."""
    ignore_band: float = 0.0
    """Mask values within 0.5 +/- this (soft teacher probabilities) are left out of the loss."""
    empty_only: bool = False
    """Keep only the photos whose mask is empty: scenes without people, so the model learns to answer 'none'."""
    ignore_regions: str | None = None
    """A folder of region masks (``masks/<stem>.png``, relative to the repository) whose pixels over 127 are
    left out of the loss for those photos: the passers-by that CCP's labels call background
    (``train.bystanders``). Training photos only; validation keeps the labels as they are."""
    calibrate: bool = False
    """Whether its val split also fits the exported model's decision threshold (validated sources always
    do): pseudo-labelled portraits, so that the threshold is not CCP's alone. Training ignores it."""
    train_only: bool = False
    """Every photo of the source trains and none validates or tests, and no split list is written: photos with
    no human masks to score against (COCO's multi-person photos, labelled by ``train.groups``)."""


@dataclass
class TrainConfig:
    name: str = "cpu-fcdn56"
    preset: str = "fcdensenet56"
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig("ccp")])
    backgrounds: list[str] = field(default_factory=lambda: ["coco128"])
    """Folders whose all-zero masks mark photos without people, used as composite backgrounds."""
    split_seed: int = 0
    seed: int = 1234
    epochs: int = 300
    samples_per_epoch: int = 500
    batch_size: int = 4
    optimizer: str = "adamw"
    lr: float = 1e-3
    lr_decay: float = 0.985
    """Exponential decay of the learning rate per epoch."""
    weight_decay: float = 1e-4
    ema_decay: float = 0.0
    """EMA of the weights (0 = off). Off by default: on this schedule the EMA weights scored far below
    the raw ones (0.02 vs 0.69 validation IoU at epoch 6), so validation uses the raw model."""
    bn_calibration_images: int = 128
    """Clean training photos used to re-estimate BatchNorm statistics before validation and export."""
    cache_long_side: int = 320
    val_limit: int = 100
    """Validate on the first N validation images (0 = all)."""
    max_empty_alpha: float = 0.10
    """An epoch can become best.pt only if its mean person probability on the val photos of the empty-only
    sources (scenes without people) stays under this: CCP validation alone once picked weights that marked
    44% of a coffee photo as person. 0.10 because every measured checkpoint at 0.118 or above on these 14
    photos failed the ship rule on held-out photos without people, and all but one at 0.091 or under passed
    (FC-DenseNet103's epoch 29 failed on object close-ups, which these whole scenes do not show; docs/experiments.md,
    "Choosing best.pt"), so the guard only narrows the choice and the ship rule has the last word."""
    grid_images: int = 6
    num_workers: int = 0
    amp: bool = True
    """bfloat16 autocast on CUDA."""
    amp_cpu: bool = False
    """bfloat16 autocast on the CPU too. Worth it where the CPU has native bf16 (AMX, AVX512-BF16): on this
    workplace's 2 cores a batch of 8 at 224 px took 6.9 s instead of 10.1 (2026-11-26, eager; torch.compile
    took 160 s to build for 6.2 s). Slower on CPUs without it, hence off unless a run asks for it."""
    compile: str = ""
    """torch.compile backend for the training steps ("" = eager; "inductor" on a GPU). On a lent H200 the
    steps alone ran at 336 samples/s while the loaders gave 2,557 (2026-11-26): the dense blocks' BatchNorm,
    ReLU, dropout and concatenations are memory-bound passes over full-resolution features, which inductor
    fuses. Validation and the saved weights use the eager model, which shares the parameters."""
    slim_checkpoint: bool = False
    """Keep ``last.pt`` without the optimiser's state and with the weights in float16 (BatchNorm statistics
    stay float32), and ``best.pt``'s weights in float16. FC-DenseNet103's full resumable state is 112 MB
    (weights 37 MB, AdamW's two moments 75 MB); slim it is 19 MB, which fits beside the tree and the data copy
    in the 64 MiB that travels to a lent GPU, and keeps each committed checkpoint small. Float16 rounds a weight
    by at most 1/2048 of itself, once per session: less than one step at lr 1e-4 moves it. A resume from
    a slim checkpoint starts the optimiser afresh and warms its rate up over ``resume_warmup_steps``, unless
    the machine still holds the same epoch's full state in ``last.full.pt`` (git-ignored, never travels)."""
    resume_warmup_steps: int = 50
    """Steps over which the rate climbs linearly back to the schedule's after a resume without optimiser
    state: fresh Adam moments make the first steps move every weight by the full rate, several times its
    usual step, until the second moment has seen some gradients."""
    dropout: float | None = None
    """Dropout after every convolution of the network; None keeps the model's default (0.2, the original
    work's). An architecture argument, so it travels in the exported config.json when set, though inference
    never applies it. Switched off to test whether it keeps FC-DenseNet103 from fitting CCP; three epochs
    said no (docs/experiments.md, "Dropout off")."""
    lovasz_weight: float = 0.0
    """Weight of a per-photo Lovász-softmax term added to the cross-entropy (train/losses.py); 0 trains on
    cross-entropy alone, the original work's loss. The term optimises the reported per-photo IoU, in which
    a small person counts as much as a large one; two epochs of it from the shipped epoch 140, at the
    schedule's last rate, gained nothing over cross-entropy (docs/experiments.md, "A Lovász term")."""
    init_weights: str | None = None
    """A weights folder (config.json + model.safetensors, relative to the repository) whose weights a new run
    starts from, with a fresh optimiser warmed up over ``resume_warmup_steps``; None: random initialisation.
    Its architecture must be the preset's. A resumed run ignores it (its checkpoint holds the weights)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# Photos of people without human masks, labelled by train.teacher (the peers' average). Not ground truth:
# unsure pixels stay out of the loss, their val splits stay out of model selection, and the human-labelled
# CCP photos keep the largest share of each epoch (with NEGATIVES: CCP 50%, portraits 30%, no-person scenes 20%).
PSEUDO_LABELLED_PEOPLE = [
    SourceConfig("people/interfaces_cc0", weight=3.0, masks="train/pseudo_labels/interfaces_cc0", validate=False, ignore_band=0.2),
    # 400 labelled (280 in train) since epoch 41, at half the weight the first 200 had: the same share, more faces.
    SourceConfig("people/congress_pd", weight=0.75, masks="train/pseudo_labels/congress_pd", validate=False, ignore_band=0.2),
]


# Scenes without people (the coco128 train-split photos with empty masks). Without them every training
# sample holds a person, and the mixed-in portraits taught the model to mark a coffee cup as person.
# At weight 3 (11% of samples) the no-person val alpha still rose to 0.40 by epoch 31; weight 6 since.
NEGATIVES = SourceConfig("coco128", weight=6.0, validate=False, empty_only=True)


def _named_configs() -> dict[str, TrainConfig]:
    original = TrainConfig(
        name="original",
        preset="fcdensenet103",
        sources=[SourceConfig("ccp")],
        backgrounds=[],
        batch_size=8,
        optimizer="rmsprop",
        lr=1e-3,
        lr_decay=0.995,
        weight_decay=1e-4,
        ema_decay=0.0,
        augment=AugmentConfig(
            patch_size=224, input_size=320, portrait_prob=0.0, composite_prob=0.0,
            grayscale_prob=0.0, blur_prob=0.0, noise_prob=0.0, color_jitter=0.0, scale_jitter=(1.0, 1.0),
        ),
    )
    # max_empty_alpha: the guard under which cpu-fcdn56 chose its checkpoints (from epoch 31), so that it reproduces.
    cpu = TrainConfig(
        sources=[SourceConfig("ccp"), *copy.deepcopy(PSEUDO_LABELLED_PEOPLE), copy.deepcopy(NEGATIVES)], max_empty_alpha=0.25
    )
    # gpu-fcdn56's recipe as it ended (epoch 171; its config.json), on FC-DenseNet103: the same data, so that
    # the two compare on capacity. Trained on the CPU between leases; train/gpu_run.sh sets the GPU's options.
    portraits, congress = copy.deepcopy(PSEUDO_LABELLED_PEOPLE)
    congress.calibrate = True
    fcdn103 = TrainConfig(
        name="fcdn103",
        preset="fcdensenet103",
        sources=[SourceConfig("ccp", ignore_regions="train/pseudo_labels/ccp_bystanders"), portraits, congress, copy.deepcopy(NEGATIVES)],
        epochs=100000,
        samples_per_epoch=1000,
        batch_size=16,
        val_limit=0,
        amp_cpu=True,
        slim_checkpoint=True,
        augment=AugmentConfig(patch_size=224, input_size=320, crowd_prob=0.3, closeup_prob=0.5, object_closeup_prob=0.7),
    )
    # Real photos (issue: people in streets, rooms, crowds): COCO's people, the human-labelled single-person
    # photos (validated on their val split beside CCP's) and the multi-person photos labelled by the teacher
    # held to their person boxes (train.groups), fine-tuned from the FC-DenseNet56 default. Per photo, the
    # human-labelled COCO photos weigh twice CCP's; COCO then makes about two thirds of the draws.
    coco = TrainConfig(
        name="coco-fcdn56",
        preset="fcdensenet56",
        sources=[
            SourceConfig("ccp", ignore_regions="train/pseudo_labels/ccp_bystanders"),
            SourceConfig("coco_people", weight=2.0),
            SourceConfig(
                "coco_people", masks="train/pseudo_labels/coco_people_groups", validate=False, ignore_band=0.2,
                ignore_regions="train/pseudo_labels/coco_people_groups/unlabelled", train_only=True,
            ),
            *copy.deepcopy(PSEUDO_LABELLED_PEOPLE),
            copy.deepcopy(NEGATIVES),
        ],
        epochs=100000,
        samples_per_epoch=1000,
        batch_size=16,
        lr=2e-4,
        lr_decay=0.98,
        val_limit=0,
        amp_cpu=True,
        slim_checkpoint=True,
        init_weights="bgremove_plugin/weights",
        augment=AugmentConfig(patch_size=224, input_size=320, crowd_prob=0.3, closeup_prob=0.5, object_closeup_prob=0.7),
    )
    return {c.name: c for c in (original, cpu, fcdn103, coco)}


NAMED_CONFIGS = _named_configs()


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    raw = dict(raw)
    augment = raw.pop("augment", {})
    if "scale_jitter" in augment:
        augment["scale_jitter"] = tuple(augment["scale_jitter"])
    for key in ("mean", "std"):
        if key in augment:
            augment[key] = tuple(augment[key])
    raw["sources"] = [SourceConfig(**s) for s in raw.get("sources", [])]
    return TrainConfig(**raw, augment=AugmentConfig(**augment))


def apply_overrides(cfg: TrainConfig, items: Sequence[str]) -> TrainConfig:
    """``KEY=JSON`` overrides (``augment.patch_size=160``), applied in order: a later one wins."""
    cfg = copy.deepcopy(cfg)
    for item in items:
        key, _, value = item.partition("=")
        target: Any = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        if not hasattr(target, leaf):
            raise SystemExit(f"--set {key}: no such config field")
        parsed = json.loads(value)
        if isinstance(parsed, list):
            parsed = tuple(parsed) if isinstance(getattr(target, leaf), tuple) else parsed
        object.__setattr__(target, leaf, parsed)
    return config_from_dict(dataclasses.asdict(cfg))  # turns the JSON values into the typed fields


def config_edits(saved: TrainConfig, edited: TrainConfig) -> list[str]:
    """The fields (``augment.patch_size``; ``sources`` as a whole) where ``edited`` differs from ``saved``."""
    old, new = dataclasses.asdict(saved), dataclasses.asdict(edited)
    changed = [key for key in new if key != "augment" and new[key] != old.get(key)]
    changed += [f"augment.{key}" for key in new["augment"] if new["augment"][key] != old["augment"].get(key)]
    return sorted(changed)


def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The architecture + preprocessing arguments that become the exported config.json."""
    kwargs: dict[str, Any] = {
        **PRESETS[cfg.preset],
        "input_size": cfg.augment.input_size,
        "mean": list(cfg.augment.mean),
        "std": list(cfg.augment.std),
    }
    if cfg.dropout is not None:
        kwargs["dropout"] = cfg.dropout
    return kwargs


# --- data ---------------------------------------------------------------------------------------


def dataset_splits(
    folder: Path, name: str, seed: int, split_dir: Path = SPLIT_DIR, masks_dir: Path | None = None
) -> dict[str, list[Sample]]:
    """The 70/20/10 split of a folder source; committed split lists win over recomputing.

    A source that has grown since its lists were written (more pseudo-labelled photos) keeps every listed
    photo where it was: only the newcomers are split, by the same rule, and appended to the lists, so no
    validation or test photo ever moves into training.
    """
    samples = folder_samples(folder, masks_dir)
    lists = {split: split_dir / f"{name}_{split}.txt" for split in ("train", "val", "test")}
    if all(p.exists() for p in lists.values()):
        by_stem = {s.stem: s for s in samples}
        stems = {split: read_split_list(p) for split, p in lists.items()}
        listed = {stem for names in stems.values() for stem in names}
        newcomers = [s for s in samples if s.stem not in listed]
        if newcomers:
            for split, extra in split_samples(newcomers, seed=seed).items():
                stems[split] += [s.stem for s in extra]
                lists[split].write_text("".join(f"{stem}\n" for stem in stems[split]))
            log.info("%s: %d new photos split and appended to %s", name, len(newcomers), split_dir)
        return {split: [by_stem[stem] for stem in names] for split, names in stems.items()}
    splits = split_samples(samples, seed=seed)
    write_split_lists(splits, split_dir, name)
    return splits


def source_splits(source: SourceConfig, seed: int, root: Path, split_dir: Path = SPLIT_DIR) -> dict[str, list[Sample]]:
    """A configured source's train/val/test samples, with its pseudo-label masks and filters applied."""
    masks_dir = REPO / source.masks / "masks" if source.masks else None
    if source.train_only:
        return {"train": folder_samples(root / source.path, masks_dir), "val": [], "test": []}
    splits = dataset_splits(root / source.path, Path(source.path).name, seed, split_dir, masks_dir)
    if source.empty_only:
        splits = {name: [s for s in samples if _mask_is_empty(s.mask)] for name, samples in splits.items()}
    return splits


def calibration_shares(sizes: list[int], weights: list[float], total: int) -> list[int]:
    """How many images of each source re-estimate BatchNorm: each source in its share of training draws."""
    draws = np.array(sizes, dtype=np.float64) * np.array(weights, dtype=np.float64)
    return [int(n) for n in np.round(draws / draws.sum() * total)]


def calibration_images(cfg: TrainConfig, root: Path, split_dir: Path = SPLIT_DIR) -> list[np.ndarray]:
    """The clean training photos a run re-estimates BatchNorm on (the same ones ``Trainer`` uses)."""
    splits = [source_splits(s, cfg.split_seed, root, split_dir) for s in cfg.sources]
    shares = calibration_shares([len(sp["train"]) for sp in splits], [s.weight for s in cfg.sources], cfg.bn_calibration_images)
    return [image for sp, n in zip(splits, shares) for image in load_set(sp["train"][:n], long_side=cfg.cache_long_side).images]


def _mask_is_empty(path: Path) -> bool:
    return not np.asarray(Image.open(path)).any()


def background_paths(folder: Path) -> list[Path]:
    return [folder / "images" / f"{p.stem}.jpg" for p in sorted((folder / "masks").glob("*.png")) if _mask_is_empty(p)]


# --- run folder ---------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        # A copy of the tree without .git (a lent GPU machine) is told its commit by whoever sent it.
        return os.environ.get("BGREMOVE_GIT_COMMIT", "unknown")


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def weights_for_checkpoint(model: torch.nn.Module, *, slim: bool) -> dict[str, torch.Tensor]:
    """``model``'s state dict on the CPU: parameters in float16 when ``slim``, buffers (BatchNorm statistics,
    counters) always as they are. ``load_state_dict`` casts float16 back into float32 parameters."""
    state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    if not slim:
        return state
    parameters = {name for name, _ in model.named_parameters()}
    return {name: value.half() if name in parameters else value for name, value in state.items()}


def _unwrap(model: torch.nn.Module) -> TiramisuNet:
    """The TiramisuNet inside an EMA wrapper, or the model itself."""
    return cast(TiramisuNet, model.module if isinstance(model, AveragedModel) else model)


@contextlib.contextmanager
def without_cudnn_search() -> Iterator[None]:
    """cuDNN's algorithm search off for the duration. Whole photos come in many padded shapes, each a new
    search; the first validation of every GPU call took 14-27 s where the later ones took 2 (metrics.jsonl
    of the leases), which is what a search per shape would cost. Whether this removes it is for the next
    lease to show (train/README.md)."""
    searching = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = searching


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images: list[np.ndarray], device: torch.device, batch_size: int = 8) -> list[np.ndarray]:
    """Person probability at each image's own size, through the same preprocessing as the package."""
    net = _unwrap(model)
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
    net = copy.deepcopy(_unwrap(model))
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


LOCAL_FULL_CHECKPOINT = "last.full.pt"
"""Beside a slim ``last.pt``: the same epoch's full state (float32 weights and the optimiser's moments). It stays
on the machine that wrote it (git-ignored), so that a session there resumes exactly instead of rounding the
weights and warming a fresh optimiser up: on 2 CPU cores a warm-up of 50 steps is most of an epoch."""


def resume_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The state ``--resume`` continues from: ``last.pt``, or the full state beside a slim one when both were
    written at the end of the same epoch (a ``last.pt`` that came back from a lent GPU is newer, and wins)."""
    checkpoint: dict[str, Any] = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    full_path = run_dir / LOCAL_FULL_CHECKPOINT
    if checkpoint["optimizer"] is not None or not full_path.exists():
        return checkpoint
    full: dict[str, Any] = torch.load(full_path, map_location="cpu", weights_only=False)
    same_epoch = all(full.get(key) == checkpoint[key] for key in ("epoch", "samples_seen", "train_seconds"))
    if not same_epoch:
        log.info("%s is from epoch %s, last.pt from epoch %s: resuming from the slim last.pt", full_path, full.get("epoch"), checkpoint["epoch"])
        return checkpoint
    log.info("resuming from %s (float32 weights and optimiser state of last.pt's epoch %d)", full_path, checkpoint["epoch"])
    return full


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
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay > 0
            else None
        )
        if cfg.slim_checkpoint and self.ema is not None:
            raise ValueError("slim_checkpoint keeps no EMA weights: set ema_decay=0 or slim_checkpoint=false")
        self.warmup_steps_left = 0
        if cfg.init_weights:
            from bgremove_plugin.hub import build_from_folder

            self.model.load_state_dict(build_from_folder(REPO / cfg.init_weights).state_dict(), strict=True)
            self.warmup_steps_left = cfg.resume_warmup_steps
        self.epoch = 0
        self.best_iou = -1.0
        self.samples_seen = 0
        self.train_seconds = 0.0

        train_sets: list[LoadedSet] = []
        val_samples: list[Sample] = []
        empty_val_samples: list[Sample] = []
        for source in cfg.sources:
            splits = source_splits(source, cfg.split_seed, root, split_dir)
            train_set = load_set(
                splits["train"], long_side=cfg.cache_long_side, name=source.path, weight=source.weight,
                ignore_band=source.ignore_band,
                ignore_dir=REPO / source.ignore_regions / "masks" if source.ignore_regions else None,
            )
            if cfg.augment.object_closeup_prob > 0:
                boxes = object_boxes(root / source.path)
                train_set.object_boxes = [boxes.get(stem, []) for stem in train_set.stems]
            if cfg.augment.object_paste_prob > 0:
                outlines = object_outlines(root / source.path)
                train_set.object_outlines = [outlines.get(stem, []) for stem in train_set.stems]
            train_sets.append(train_set)
            if source.validate:
                val_samples += splits["val"]
            if source.empty_only:
                empty_val_samples += splits["val"]
        if cfg.val_limit:
            val_samples = val_samples[: cfg.val_limit]
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
        if cfg.augment.object_paste_prob > 0:
            log.info("objects outlined for pasting %s", [sum(map(len, s.object_outlines)) for s in train_sets])

    # checkpoint -------------------------------------------------------------------------------
    def state(self, *, slim: bool) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.cfg),
            "model": weights_for_checkpoint(self.model, slim=slim),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": None if slim else self.optimizer.state_dict(),
            "lr": [group["lr"] for group in self.optimizer.param_groups],
            "warmup_steps_left": self.warmup_steps_left,
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "best_iou": self.best_iou,
            "selection_rule": self.selection_rule,
            "samples_seen": self.samples_seen,
            "train_seconds": self.train_seconds,
            "rng": _rng_state(),
        }

    def load(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        if self.ema and checkpoint["ema"] is not None:
            self.ema.load_state_dict(checkpoint["ema"])
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
        _set_rng_state(checkpoint["rng"])

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
        """One optimiser step on a batch from :meth:`epoch_loader`; returns the loss and its cross-entropy
        part (the same number unless ``lovasz_weight`` is set), still on the device."""
        use_amp = self.cfg.amp if self.device.type == "cuda" else self.cfg.amp_cpu
        images = images.to(self.device, non_blocking=True).to(memory_format=torch.channels_last)
        masks = masks.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = self.step_model(images)
        cross_entropy = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_LABEL)
        loss = cross_entropy
        if self.cfg.lovasz_weight:
            loss = loss + self.cfg.lovasz_weight * lovasz_softmax(logits, masks, ignore_index=IGNORE_LABEL)
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
        if self.ema:
            self.ema.update_parameters(self.model)
        return torch.stack([loss.detach(), cross_entropy.detach()])

    def train_epoch(self) -> tuple[float, float, float]:
        """Mean training loss, its cross-entropy part, and the seconds spent waiting for batches: on a lent
        GPU, where an epoch took ten times longer than its arithmetic, this says whether the data loaders or
        the steps are the limit."""
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
        loss, cross_entropy = torch.stack(losses).mean(dim=0).tolist()
        return loss, cross_entropy, data_wait

    def validate(self) -> tuple[float, float, list[np.ndarray], TiramisuNet]:
        """Validation IoU and no-person mean probability of the (EMA or raw) weights with recalibrated
        BatchNorm, which is what ships. The mean probability is 0 when no source is empty-only."""
        source = self.ema if self.ema else self.model
        with without_cudnn_search():
            model = recalibrate_batchnorm(source, self.calibration_images, self.device)
            probs = predict_probabilities(model, self.val.images, self.device)
            empty_probs = predict_probabilities(model, self.val_empty.images, self.device)
        ious = [person_iou(p, m) for p, m in zip(probs, self.val.masks)]
        empty_alpha = float(np.mean([p.mean() for p in empty_probs])) if empty_probs else 0.0
        return float(np.mean(ious)), empty_alpha, probs, model

    def run(self, max_minutes: float) -> None:
        cfg = self.cfg
        started = time.time()
        metrics_path = self.run_dir / "metrics.jsonl"
        while self.epoch < cfg.epochs:
            epoch_start = time.time()
            loss, cross_entropy, data_wait = self.train_epoch()
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
            }
            if cfg.lovasz_weight:
                # Comparable with the runs trained on cross-entropy alone, whose train_loss is this.
                row["train_cross_entropy"] = round(cross_entropy, 5)
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
            # The same config can train on another copy of the data (a lent GPU's JPEG-75 copy): say which.
            "overrides": args.set, "config_edits": edits, "data_root": str(root),
        }) + "\n")
    trainer.run(args.max_minutes)


if __name__ == "__main__":
    main()
