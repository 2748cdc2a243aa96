from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PORTRAIT = REPO / "examples" / "astronaut.jpg"


def pytest_configure(config: pytest.Config) -> None:
    # ONNX exports of test weights go to a throwaway cache (inherited by subprocesses), never the user's.
    if "BGREMOVE_CACHE" not in os.environ:
        import tempfile

        os.environ["BGREMOVE_CACHE"] = tempfile.mkdtemp(prefix="bgremove-test-cache-")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for servers started by tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shared_data_root() -> Path:
    env = os.environ.get("BGREMOVE_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if not (root / "ccp" / "images").is_dir():
        pytest.skip(f"shared data not found at {root} (set BGREMOVE_DATA to the folder holding ccp/ and coco128/)")
    return root


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random TiramisuNet saved the way published weights are, for fast mechanics tests."""
    import torch

    from bgremove_plugin.model import TiramisuNet

    torch.manual_seed(0)
    model = TiramisuNet(down_layers=[1, 1], bottleneck_layers=1, growth_rate=4, first_conv_channels=8, input_size=64, pad_multiple=32)
    folder = tmp_path_factory.mktemp("tiny_weights")
    model.eval().save_pretrained(folder)
    return folder
