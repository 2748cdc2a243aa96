"""The ONNX Runtime backend: agreement with PyTorch, export caching, and choosing/falling back."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bgremove_plugin import (
    BackendUnavailableError,
    BackgroundRemover,
    DeviceUnavailableError,
    InvalidArgumentError,
    load_model,
    onnx_backend,
)
from bgremove_plugin.hub import DEFAULT_WEIGHTS_DIR
from bgremove_plugin.transforms import prepare_batch

from .conftest import FIXTURES, PORTRAIT, shared_data_root


def real_photos() -> list[Image.Image]:
    photos = [Image.open(p).convert("RGB") for p in (PORTRAIT, FIXTURES / "chelsea.jpg", FIXTURES / "coffee.jpg")]
    ccp = shared_data_root() / "ccp" / "images"
    if ccp.is_dir():
        photos += [Image.open(p).convert("RGB") for p in sorted(ccp.glob("*.jpg"))[:4]]
    return photos


@pytest.fixture(autouse=True)
def fresh_sessions() -> None:
    # Sessions other tests opened for the same weights would answer before any file is looked at.
    onnx_backend._sessions.clear()
    onnx_backend._sessions_by_net.clear()


def test_onnx_and_torch_probabilities_agree_on_real_photos() -> None:
    net = load_model(None, device="cpu")
    runner = onnx_backend.onnx_for(net, weights_dir=DEFAULT_WEIGHTS_DIR)
    photos = real_photos()
    # One at a time and as a padded batch of mixed sizes: both must match to 1e-4.
    for chunk in [[p] for p in photos] + [photos[:3]]:
        batch, _ = prepare_batch(chunk, long_side=net.input_size, multiple=net.pad_multiple, mean=net.mean, std=net.std)
        with torch.inference_mode():
            expected = net(batch).float().softmax(dim=1)[:, 1].numpy()
        got = runner(batch.numpy())
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4


def test_the_shipped_onnx_file_was_exported_from_the_shipped_weights() -> None:
    shipped = onnx_backend.OnnxNet(DEFAULT_WEIGHTS_DIR / onnx_backend.ONNX_NAME)
    assert shipped.fingerprint == onnx_backend.weights_fingerprint(load_model(None, device="cpu")), (
        "bgremove_plugin/weights/model.onnx is stale: re-export it with python -m train.export ... --onnx"
    )


def _initializer_types(path: Path) -> dict[str, int]:
    import onnx
    from onnx import TensorProto

    types = [init.data_type for init in onnx.load(str(path)).graph.initializer]
    return {"float16": types.count(TensorProto.FLOAT16), "float32": types.count(TensorProto.FLOAT)}


def test_the_shipped_onnx_file_stores_the_float16_weights_as_float16() -> None:
    # The weights ship in float16; a float32 copy of them in the graph would double the file for nothing.
    types = _initializer_types(DEFAULT_WEIGHTS_DIR / onnx_backend.ONNX_NAME)
    assert types["float16"] > 100 and types["float32"] == 0


def test_weights_that_float16_holds_exactly_are_stored_in_float16_and_compute_the_same(
    tiny_weights: Path, tmp_path: Path
) -> None:
    import copy

    random_weights = copy.deepcopy(load_model(tiny_weights, device="cpu"))
    published_in_float16 = copy.deepcopy(random_weights)
    with torch.no_grad():
        for tensor in published_in_float16.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    batch = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    for net, name in ((random_weights, "random"), (published_in_float16, "rounded")):
        path = onnx_backend.export_onnx(net, tmp_path / f"{name}.onnx")
        types = _initializer_types(path)
        # Random convolution weights would be rounded by float16, so they stay float32: nothing is lost.
        # (BatchNorm's initial ones and zeros are exact, so even those become float16.)
        assert types["float16"] > 0 and (types["float32"] > 0) == (name == "random"), (name, types)
        with torch.inference_mode():
            expected = net.eval()(batch).softmax(dim=1)[:, 1].numpy()
        assert np.abs(onnx_backend.OnnxNet(path)(batch.numpy()) - expected).max() < 1e-5, name


def test_default_remover_uses_the_shipped_file_without_exporting(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the shipped model.onnx should have been used")

    monkeypatch.setattr(onnx_backend, "export_onnx", no_export)
    remover = BackgroundRemover(device="cpu", backend="onnx")
    assert remover.backend == "onnx"
    assert remover._onnx is not None and remover._onnx.path == DEFAULT_WEIGHTS_DIR / onnx_backend.ONNX_NAME


def test_backends_give_the_same_cutout() -> None:
    photo = Image.open(PORTRAIT)
    by_torch = np.asarray(BackgroundRemover(device="cpu", backend="torch", precision="float32").remove(photo), dtype=np.int16)
    by_onnx = np.asarray(BackgroundRemover(device="cpu", backend="onnx").remove(photo), dtype=np.int16)
    # Probabilities agree to 1e-4, so the 8-bit alpha and colours differ by at most one rounding step.
    assert np.abs(by_torch - by_onnx).max() <= 1


def test_new_weights_are_exported_once_and_then_reused(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGREMOVE_CACHE", str(tmp_path / "cache"))
    # The torch backend runs a channels_last copy on the CPU; exporting the shared model must still work.
    BackgroundRemover(tiny_weights, device="cpu", backend="torch")
    first = BackgroundRemover(tiny_weights, device="cpu", backend="onnx")
    exported = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(exported) == 1 and first._onnx is not None and first._onnx.path == exported[0]

    onnx_backend._sessions.clear()
    onnx_backend._sessions_by_net.clear()
    monkeypatch.setattr(onnx_backend, "export_onnx", lambda *a, **k: pytest.fail("exported twice"))
    second = BackgroundRemover(tiny_weights, device="cpu", backend="onnx")
    assert second._onnx is not None and second._onnx.path == exported[0]


def test_a_network_seen_before_finds_its_session_without_hashing_its_weights(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGREMOVE_CACHE", str(tmp_path / "cache"))
    net = load_model(tiny_weights, device="cpu")
    first = onnx_backend.onnx_for(net)
    hashed: list[object] = []
    monkeypatch.setattr(onnx_backend, "weights_fingerprint", lambda model: hashed.append(model) or "x")
    assert onnx_backend.onnx_for(net) is first and hashed == []
    assert onnx_backend.onnx_for(net, threads=1) is not first and hashed  # another thread count: looked up by weights


def test_the_torch_backend_leaves_the_shared_network_as_it_was(tiny_weights: Path) -> None:
    shared = load_model(tiny_weights, device="cpu")
    remover = BackgroundRemover(tiny_weights, device="cpu", backend="torch")
    assert load_model(tiny_weights, device="cpu") is shared and remover.model is not shared
    assert all(p.is_contiguous() for p in shared.parameters())
    weight = next(p for p in remover.model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_a_stale_onnx_file_next_to_the_weights_is_ignored(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGREMOVE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    shutil.copy(DEFAULT_WEIGHTS_DIR / onnx_backend.ONNX_NAME, folder / onnx_backend.ONNX_NAME)  # other weights' graph
    remover = BackgroundRemover(folder, device="cpu", backend="onnx")
    assert remover._onnx is not None and remover._onnx.path.parent == tmp_path / "cache" / "onnx"
    photo = Image.open(PORTRAIT)
    torch_alpha = np.asarray(
        BackgroundRemover(folder, device="cpu", backend="torch", precision="float32").remove(photo, return_mask=True)
    )
    onnx_alpha = np.asarray(remover.remove(photo, return_mask=True))
    assert np.abs(torch_alpha.astype(int) - onnx_alpha.astype(int)).max() <= 1


def test_without_the_extra_onnx_fails_clearly_and_auto_still_works(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes "import onnxruntime" raise ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'bgremove_plugin\[onnx\]'"):
        BackgroundRemover(tiny_weights, device="cpu", backend="onnx")
    assert BackgroundRemover(tiny_weights, device="cpu").backend == "torch"


def test_an_unknown_backend_is_refused(tiny_weights: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="backend must be"):
        BackgroundRemover(tiny_weights, device="cpu", backend="tensorrt")  # type: ignore[arg-type]


def test_onnx_on_cuda_needs_the_gpu_build_and_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailableError, match="pip install onnxruntime-gpu") as raised:
        onnx_backend.onnx_provider(torch.device("cuda"))
    assert "CPUExecutionProvider" in str(raised.value)
    # Chosen automatically, the device falls back to the CPU provider instead of failing.
    assert onnx_backend.onnx_provider(torch.device("cuda"), fall_back=True) == ("CPUExecutionProvider", 0)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_backend.onnx_provider(torch.device("cuda:1")) == ("CUDAExecutionProvider", 1)
    assert onnx_backend.onnx_provider(torch.device("cpu")) == ("CPUExecutionProvider", 0)
    with pytest.raises(BackendUnavailableError, match="not mps"):
        onnx_backend.onnx_provider(torch.device("mps"))


def test_the_provider_running_the_graph_is_visible(tiny_weights: Path) -> None:
    remover = BackgroundRemover(tiny_weights, device="cpu", backend="onnx")
    assert remover.provider == "CPUExecutionProvider" and "onnx on CPUExecutionProvider" in repr(remover)
    plain = BackgroundRemover(tiny_weights, device="cpu")
    assert plain.provider is None and "backend=torch" in repr(plain)
