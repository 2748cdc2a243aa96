"""What a training run is: its sources, schedule, augmentation and network, and the named configs that
reproduce the project's runs (``python -m train.train --config NAME``)."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bgremove_plugin.model import PRESETS

from .data import AugmentConfig


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
    do): pseudo-labelled portraits, so that the threshold is not CCP's alone; on an ``empty_only`` source,
    its scenes without people, so that the threshold pays for background kept. Training ignores it."""
    train_only: bool = False
    """Every photo of the source trains and none validates or tests, and no split list is written: photos with
    no human masks to score against (COCO's multi-person photos, labelled by ``train.groups``)."""
    away_windows: bool = False
    """Whether ``augment.away_prob`` may cut windows away from everyone out of this source although its labels
    are a teacher's: right only where every person is in the label or in ``ignore_regions``, as ``train.groups``
    makes them from COCO's person boxes. Human-labelled sources always take part."""

    def __post_init__(self) -> None:
        if self.away_windows and self.masks is not None and self.ignore_regions is None:
            # Without left-out regions nothing marks whom the teacher missed, and a window could cut one out.
            raise ValueError(
                f"source {self.path!r} asks for away_windows on the teacher labels {self.masks!r} but has no "
                "ignore_regions: give it the left-out regions made with its labels (train.groups writes them) "
                "or leave away_windows off"
            )


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
    """bfloat16 autocast on the CPU too. Worth it where the CPU has native bf16 (AMX, AVX512-BF16): on 2 cores
    of such a CPU a batch of 8 at 224 px took 6.9 s instead of 10.1 (2026-11-26, eager; torch.compile took
    160 s to build for 6.2 s). Slower on CPUs without it, hence off unless a run asks for it."""
    compile: str = ""
    """torch.compile backend for the training steps ("" = eager; "inductor" on a GPU). On an H200 the eager
    steps alone ran at 336 samples/s while the loaders gave 2,557 (2026-11-26): the dense blocks' BatchNorm,
    ReLU, dropout and concatenations are memory-bound passes over full-resolution features, which inductor
    fuses. Validation and the saved weights use the eager model, which shares the parameters."""
    slim_checkpoint: bool = False
    """Keep ``last.pt`` without the optimiser's state and with the weights in float16 (BatchNorm statistics
    stay float32), and ``best.pt``'s weights in float16. FC-DenseNet103's full resumable state is 112 MB
    (weights 37 MB, AdamW's two moments 75 MB); slim it is 19 MB, which keeps a committed checkpoint small
    and quick to copy between machines. Float16 rounds a weight by at most 1/2048 of itself, once per
    session: less than one step at lr 1e-4 moves it. A resume from a slim checkpoint starts the optimiser
    afresh and warms its rate up over ``resume_warmup_steps``, unless the machine still holds the same
    epoch's full state in ``last.full.pt`` (git-ignored, never committed)."""
    resume_warmup_steps: int = 50
    """Steps over which the rate climbs linearly back to the schedule's after a resume without optimiser
    state: fresh Adam moments make the first steps move every weight by the full rate, several times its
    usual step, until the second moment has seen some gradients."""
    dropout: float | None = None
    """Dropout after every convolution of the network; None keeps the model's default (0.2, the original
    work's). An architecture argument, so it is written to the exported config.json when set, though inference
    never applies it. Switched off to test whether it keeps FC-DenseNet103 from fitting CCP; three epochs
    said no (docs/experiments.md, "Dropout off")."""
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
    # the two compare on capacity.
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
            # COCO's people pull the fitted threshold down to where scenes without people pay for it too.
            dataclasses.replace(NEGATIVES, calibrate=True),
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


RETIRED_FIELDS = {"ema_decay": 0.0, "lovasz_weight": 0.0, "object_paste_prob": 0.0}
"""Switches that ablations rejected and no run uses, removed from the code (their results are in
docs/experiments.md): a saved config may still name them, at their neutral value, and is read without them."""


def _without_retired(raw: dict[str, Any]) -> dict[str, Any]:
    kept = {}
    for key, value in raw.items():
        if key in RETIRED_FIELDS:
            if value != RETIRED_FIELDS[key]:
                raise ValueError(
                    f"this config sets {key}={value}, a switch removed from the training code (docs/experiments.md); "
                    "run it with a checkout from before its removal"
                )
            continue
        kept[key] = value
    return kept


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    raw = _without_retired(raw)
    augment = _without_retired(raw.pop("augment", {}))
    if "scale_jitter" in augment:
        augment["scale_jitter"] = tuple(augment["scale_jitter"])
    for key in ("mean", "std"):
        if key in augment:
            augment[key] = tuple(augment[key])
    raw["sources"] = [SourceConfig(**s) for s in raw.get("sources", [])]
    return TrainConfig(**raw, augment=AugmentConfig(**augment))


def apply_overrides(cfg: TrainConfig, items: Sequence[str]) -> TrainConfig:
    """``KEY=JSON`` overrides (``augment.patch_size=160``; ``sources.2.weight=1.5``, a source by its place in
    the list), applied in order: a later one wins."""
    cfg = copy.deepcopy(cfg)
    for item in items:
        key, _, value = item.partition("=")
        target: Any = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            if isinstance(target, list):
                if not parent.isdigit() or int(parent) >= len(target):
                    raise SystemExit(f"--set {key}: {parent} is not one of the {len(target)} places in that list")
                target = target[int(parent)]
            else:
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
