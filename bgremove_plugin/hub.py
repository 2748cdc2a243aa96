"""Find and load weights: the embedded default, a local folder, or a Hugging Face Hub repo.

A weights folder is what ``TiramisuNet.save_pretrained`` writes: ``config.json`` (architecture and
preprocessing) and ``model.safetensors``. Pickled checkpoints are never loaded.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DeviceUnavailableError, ModelLoadError

if TYPE_CHECKING:
    import torch

    from .model import TiramisuNet

__all__ = ["DEFAULT_WEIGHTS_DIR", "OFFICIAL_REPO_ID", "OFFICIAL_REVISION", "load_model", "resolve_device"]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
OFFICIAL_REPO_ID = "bgremove/tiramisu-person"
"""Where the default weights are published on the Hugging Face Hub."""
OFFICIAL_REVISION = "main"
"""The Hub revision this release was tested with; pinned to a commit once one is published."""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_cache: dict[tuple[str, str | None, str], TiramisuNet] = {}
_cache_lock = threading.Lock()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA, then MPS, then CPU; a named accelerator must exist or this raises."""
    import torch

    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise DeviceUnavailableError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={name!r} was requested but CUDA is not available to this torch build "
            f"({torch.__version__}); use device='cpu' or 'auto', or install a CUDA build of torch"
        )
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"device={name!r} was requested but MPS is not available; use 'cpu' or 'auto'")
    return resolved


def _download(
    repo_id: str,
    revision: str | None,
    *,
    local_files_only: bool,
    cache_dir: str | Path | None,
    token: str | bool | None,
) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                    token=token,
                    library_name="bgremove_plugin",
                )
            )
        except HFValidationError as exc:
            raise ModelLoadError(
                f"{repo_id!r} is neither an existing local folder nor a valid Hub repo id ('org/name')"
            ) from exc
        except RepositoryNotFoundError as exc:
            at = f" at revision {revision!r}" if revision else ""
            raise ModelLoadError(
                f"Hub repo {repo_id!r}{at} was not found: check the id and revision; a private repo needs token="
            ) from exc
        except RevisionNotFoundError as exc:
            raise ModelLoadError(f"Hub repo {repo_id!r} has no revision {revision!r}") from exc
        except LocalEntryNotFoundError as exc:
            raise ModelLoadError(
                f"{filename} of {repo_id!r} is not in the local Hugging Face cache and downloading is off or failed "
                "(offline, HF_HUB_OFFLINE=1 or local_files_only=True); download it once while online, or pass a local folder"
            ) from exc
        except EntryNotFoundError as exc:
            raise ModelLoadError(
                f"Hub repo {repo_id!r} has no {filename}: it is not a bgremove_plugin weights repo"
            ) from exc
    return Path(paths[0]).parent


def _local_folder(source: str | Path | None) -> Path | None:
    """The weights folder ``source`` names on disk (the embedded default for None), or None for a Hub id."""
    if source is None:
        return DEFAULT_WEIGHTS_DIR
    path = Path(source).expanduser()
    return path.resolve() if path.is_dir() else None


def onnx_folder(source: str | Path | None, revision: str | None) -> Path | None:
    """Where a ``model.onnx`` published with the weights ``load_model(source)`` loads would lie: the local
    folder, or for a Hub id the cache folder it was downloaded into (None when the repo has none or it
    cannot be fetched: the caller then exports the weights itself). Its fingerprint is checked before use."""
    folder = _local_folder(source)
    if folder is not None:
        return folder
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(str(source), "model.onnx", revision=revision, library_name="bgremove_plugin")).parent
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        log.info("no published model.onnx for %s (%s); exporting the weights instead", source, exc)
        return None


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{folder} has no {CONFIG_NAME}; a weights folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} must hold a JSON object of TiramisuNet arguments")
    return config


def build_from_folder(folder: Path) -> TiramisuNet:
    """Rebuild the network from ``config.json`` and load ``model.safetensors`` with strict key checks."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import TiramisuNet

    config = _read_config(folder)
    try:
        model = TiramisuNet(**config)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{folder / CONFIG_NAME} does not describe a TiramisuNet: {exc}") from exc
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{folder} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{weights} is not a readable safetensors file (corrupt or truncated download?): {exc}"
        ) from exc
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        details = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
            if keys
        )
        raise ModelLoadError(
            f"{weights} does not match the architecture in {CONFIG_NAME} ({details}); "
            "the two files must come from the same save_pretrained call"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_model(
    source: str | Path | None = None,
    *,
    revision: str | None = None,
    device: str | torch.device | None = "auto",
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> TiramisuNet:
    """Load weights once per process and return the model in eval mode.

    Args:
        source: ``None`` for the weights inside the package, a local folder, or a Hub repo id.
        revision: Hub branch, tag or commit (Hub ids only).
        device: ``"auto"`` (default, as in ``remove_background``: CUDA, then MPS, then CPU), ``"cpu"``,
            ``"cuda"`` or ``"mps"``; an unavailable accelerator raises.
        local_files_only: never touch the network; read only the Hugging Face cache.
        cache_dir: Hugging Face cache folder (default: ``HF_HOME``'s).
        token: Hub token for private repos.

    Raises:
        ModelLoadError: the weights are missing, corrupt or do not match their config.
        DeviceUnavailableError: ``device`` names an accelerator this process cannot use.

    Example:
        >>> model = load_model()  # the embedded default weights
        >>> model.input_size > 0
        True
    """
    torch_device = resolve_device(device)
    folder = _local_folder(source)
    key = "<default>" if source is None else str(folder or source)
    cache_key = (key, revision, str(torch_device))
    with _cache_lock:
        cached = _cache.get(cache_key)
        if cached is not None:
            return cached
        if folder is None:
            if isinstance(source, Path) or str(source).startswith((".", "/", "~")):
                raise ModelLoadError(f"weights folder {source} does not exist")
            folder = _download(
                str(source), revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token
            )
        model = build_from_folder(folder).to(torch_device)
        log.info("loaded %s (%s) on %s", key, folder, torch_device)
        _cache[cache_key] = model
        return model
