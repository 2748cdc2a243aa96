"""A run's resumable state on disk: ``last.pt`` (slim or full), the full state kept beside a slim one, and
what the state holds besides the weights (random generators, the commit it was trained from)."""

from __future__ import annotations

import logging
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("train")
REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        # A copy of the tree without .git (an archive copied to a training machine) is told its commit.
        return os.environ.get("BGREMOVE_GIT_COMMIT", "unknown")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_for_checkpoint(model: torch.nn.Module, *, slim: bool) -> dict[str, torch.Tensor]:
    """``model``'s state dict on the CPU: parameters in float16 when ``slim``, buffers (BatchNorm statistics,
    counters) always as they are. ``load_state_dict`` casts float16 back into float32 parameters."""
    state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    if not slim:
        return state
    parameters = {name for name, _ in model.named_parameters()}
    return {name: value.half() if name in parameters else value for name, value in state.items()}


LOCAL_FULL_CHECKPOINT = "last.full.pt"
"""Beside a slim ``last.pt``: the same epoch's full state (float32 weights and the optimiser's moments). It stays
on the machine that wrote it (git-ignored), so that a session there resumes exactly instead of rounding the
weights and warming a fresh optimiser up: on 2 CPU cores a warm-up of 50 steps is most of an epoch."""


def resume_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The state ``--resume`` continues from: ``last.pt``, or the full state beside a slim one when both were
    written at the end of the same epoch (a ``last.pt`` trained further on another machine is newer, and wins)."""
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
