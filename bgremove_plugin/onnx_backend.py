"""ONNX Runtime inference for a ``TiramisuNet``: the faster CPU path (extra ``bgremove_plugin[onnx]``).

The network is exported once per set of weights with dynamic batch, height and width, and the file is
reused: first a ``model.onnx`` shipped or published next to the weights, then the user cache
(``$BGREMOVE_CACHE``, else ``$XDG_CACHE_HOME/bgremove``, else ``~/.cache/bgremove``). A file is used only
if its recorded fingerprint equals the weights' own, so stale exports are never run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .errors import BackendUnavailableError, DeviceUnavailableError
from .transforms import person_probability

if TYPE_CHECKING:
    import onnx  # type: ignore[import-untyped,unused-ignore]

    from .model import TiramisuNet

__all__ = [
    "ONNX_NAME",
    "Backend",
    "OnnxNet",
    "export_onnx",
    "onnx_cache_dir",
    "onnx_for",
    "weights_fingerprint",
]

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "onnx"]
ONNX_NAME = "model.onnx"
FINGERPRINT_KEY = "bgremove_weights_sha256"
_INSTALL_HINT = "install the extra: pip install 'bgremove_plugin[onnx]' (onnxruntime, onnx, onnxscript)"

_sessions: dict[tuple[str, int, Provider], OnnxNet] = {}
_sessions_by_net: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, Provider], OnnxNet]] = weakref.WeakKeyDictionary()
"""The same sessions by network object, so a network seen before is not hashed again; the package never
changes a loaded network's weights."""
_sessions_lock = threading.Lock()


def onnx_cache_dir() -> Path:
    """Where exported ONNX files are kept between processes."""
    explicit = os.environ.get("BGREMOVE_CACHE")
    if explicit:
        return Path(explicit).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bgremove" / "onnx"


def weights_fingerprint(net: TiramisuNet) -> str:
    """SHA-256 of the float32 weights and their names, which fix the graph: equal fingerprints, equal outputs.
    (Preprocessing settings such as ``input_size`` live outside the exported graph.)"""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class _PersonProbability(torch.nn.Module):
    """What the exported graph computes: the person-class probability, (N, 1, H, W)."""

    def __init__(self, net: TiramisuNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return person_probability(self.net(x)).unsqueeze(1)


def export_onnx(net: TiramisuNet, path: Path) -> Path:
    """Write ``net`` as ONNX with dynamic batch/height/width and its weights' fingerprint in the metadata.

    Raises:
        BackendUnavailableError: the exporter's packages (onnx, onnxscript) are missing.
    """
    try:
        import onnx  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise BackendUnavailableError(f"exporting to ONNX needs the onnx package; {_INSTALL_HINT}") from exc
    import copy

    fingerprint = weights_fingerprint(net)
    # A channels_last copy (what the torch backend uses on CPU) would trace stride guards into the graph.
    plain = copy.deepcopy(net).to("cpu", torch.float32).to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    module = _PersonProbability(plain.eval()).eval()
    side = 2 * net.pad_multiple
    example = torch.rand(1, 3, side, side)
    dims = {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        tmp = Path(scratch) / path.name
        with warnings.catch_warnings():
            # The exporter is chatty about optional torchvision ops and tracing details that do not apply here.
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            try:
                torch.onnx.export(
                    module, (example,), str(tmp), dynamo=True, input_names=["image"], output_names=["person"],
                    dynamic_shapes={"x": dims}, external_data=False, verbose=False,
                )
            except ImportError as exc:
                raise BackendUnavailableError(f"the ONNX exporter needs onnxscript; {_INSTALL_HINT}") from exc
        model = onnx.load(str(tmp))
        stored_as_float16 = _store_float16_where_exact(model)
        entry = model.metadata_props.add()
        entry.key, entry.value = FINGERPRINT_KEY, fingerprint
        onnx.save(model, str(tmp))
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
    log.info("exported ONNX model to %s (%d weights stored as float16)", path, stored_as_float16)
    return path


def _store_float16_where_exact(model: onnx.ModelProto) -> int:
    """Stores each float32 weight that float16 holds exactly (all of them, for weights published in float16)
    as float16, cast back to float32 by the graph: the file halves and the arithmetic stays float32, so the
    outputs are unchanged (ONNX Runtime folds the casts once, when the session loads). A weight float16
    would round stays float32. Returns how many weights were converted."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for initializer in model.graph.initializer:
        if initializer.data_type != TensorProto.FLOAT:
            continue
        weights = numpy_helper.to_array(initializer)
        half = weights.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), weights):
            continue
        name = initializer.name
        initializer.CopyFrom(numpy_helper.from_array(half, f"{name}__float16"))
        casts.append(helper.make_node("Cast", [f"{name}__float16"], [name], to=TensorProto.FLOAT, name=f"{name}__to_float32"))
    # First in the node list, so that every consumer still comes after what it reads.
    nodes = [*casts, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(casts)


Provider = tuple[str, int]
"""An ONNX Runtime execution provider and its device index: ("CPUExecutionProvider", 0), ("CUDAExecutionProvider", 1)."""
CPU_PROVIDER: Provider = ("CPUExecutionProvider", 0)
_GPU_HINT = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"


def onnx_provider(device: torch.device, *, fall_back: bool = False) -> Provider:
    """The execution provider for ``device``: CPU, or CUDA where onnxruntime-gpu provides it.

    Raises:
        DeviceUnavailableError: CUDA was asked for and this onnxruntime has no CUDA provider, unless
            ``fall_back`` (the device was chosen automatically), which gives the CPU provider.
        BackendUnavailableError: a device ONNX Runtime is not used on here (``mps``).
    """
    if device.type == "cpu":
        return CPU_PROVIDER
    if device.type != "cuda":
        raise BackendUnavailableError(f"backend='onnx' runs on the CPU or CUDA, not {device}; use backend='torch'")
    try:
        import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise BackendUnavailableError(f"backend='onnx' needs onnxruntime; {_INSTALL_HINT}") from exc
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ("CUDAExecutionProvider", device.index or 0)
    if fall_back:
        log.info("onnxruntime has no CUDA provider (%s): ONNX runs on the CPU", ", ".join(available))
        return CPU_PROVIDER
    raise DeviceUnavailableError(
        f"backend='onnx' on {device} needs ONNX Runtime's CUDA provider, and this onnxruntime has only "
        f"{', '.join(available)}; install the GPU build: {_GPU_HINT}"
    )


class OnnxNet:
    """An ONNX Runtime session that maps a normalised (N, 3, H, W) batch to person probabilities (N, H, W)."""

    def __init__(self, path: Path, *, threads: int | None = None, provider: Provider = CPU_PROVIDER) -> None:
        try:
            import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]
        except ImportError as exc:
            raise BackendUnavailableError(f"backend='onnx' needs onnxruntime; {_INSTALL_HINT}") from exc
        options = ort.SessionOptions()
        # Respect the caller's torch.set_num_threads so both backends use the same cores.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = path
        name, index = provider
        providers: list[Any] = ["CPUExecutionProvider"]
        if name != "CPUExecutionProvider":
            providers.insert(0, (name, {"device_id": index}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.provider: str = self.session.get_providers()[0]
        """The provider that runs the graph (ONNX Runtime falls back to the CPU if it cannot start CUDA)."""
        self.fingerprint: str | None = self.session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:  # one run at a time per session keeps the thread budget predictable
            (probabilities,) = self.session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(probabilities)[:, 0]


def _matching(path: Path, fingerprint: str, threads: int, provider: Provider) -> OnnxNet | None:
    if not path.is_file():
        return None
    try:
        candidate = OnnxNet(path, threads=threads, provider=provider)
    except BackendUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; a bad file is re-exported
        log.warning("ignoring unreadable ONNX file %s: %s", path, exc)
        return None
    if candidate.fingerprint != fingerprint:
        log.info("ignoring %s: exported from other weights", path)
        return None
    return candidate


def onnx_for(
    net: TiramisuNet, *, weights_dir: Path | None = None, threads: int | None = None, provider: Provider = CPU_PROVIDER
) -> OnnxNet:
    """The ONNX Runtime twin of ``net`` on ``provider`` (:func:`onnx_provider`): a matching ``model.onnx``
    next to the weights, else the cached export, else a fresh export into the cache. Sessions are shared
    within the process.

    Raises:
        BackendUnavailableError: onnxruntime (or, when an export is needed, onnx/onnxscript) is missing.
    """
    try:
        import onnxruntime  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(f"backend='onnx' needs onnxruntime; {_INSTALL_HINT}") from exc
    n_threads = threads or torch.get_num_threads()
    setting = (n_threads, provider)
    with _sessions_lock:
        # The network load_model caches comes back on every remove_background(backend="onnx") call: its
        # session is found without hashing every weight again.
        known = _sessions_by_net.get(net, {}).get(setting)
        if known is not None:
            return known
    fingerprint = weights_fingerprint(net)
    key = (fingerprint, *setting)
    with _sessions_lock:
        cached = _sessions.get(key)
        if cached is not None:
            _sessions_by_net.setdefault(net, {})[setting] = cached
            return cached
        candidates = [weights_dir / ONNX_NAME] if weights_dir is not None else []
        cache_path = onnx_cache_dir() / f"tiramisu-{fingerprint[:20]}.onnx"
        found = None
        for path in [*candidates, cache_path]:
            found = _matching(path, fingerprint, n_threads, provider)
            if found is not None:
                break
        if found is None:
            export_onnx(net, cache_path)
            found = OnnxNet(cache_path, threads=n_threads, provider=provider)
        _sessions[key] = found
        _sessions_by_net.setdefault(net, {})[setting] = found
        return found

