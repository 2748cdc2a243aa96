"""Publish weights to the Hugging Face Hub: config.json, model.safetensors, the model card and, when it
matches the weights, model.onnx.

Uses ``TiramisuNet.push_to_hub`` (huggingface_hub's PyTorchModelHubMixin), with ``model_card.md`` as
the repo's README.md. ``--dry-run DIR`` writes exactly the files that would be uploaded and touches no
network.

Examples:
    python -m train.publish --repo-id bgremove/tiramisu-person --dry-run /tmp/staged
    HF_TOKEN=... python -m train.publish --repo-id bgremove/tiramisu-person
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from safetensors import safe_open

from bgremove_plugin.errors import BackendUnavailableError
from bgremove_plugin.hub import DEFAULT_WEIGHTS_DIR, WEIGHTS_NAME, build_from_folder
from bgremove_plugin.model import TiramisuNet
from bgremove_plugin.onnx_backend import ONNX_NAME, OnnxNet, weights_fingerprint

REPO = Path(__file__).resolve().parents[1]
REQUIRED_CARD_FIELDS = ("license", "library_name", "pipeline_tag", "tags", "datasets", "model-index")


def load_card(path: Path) -> ModelCard:
    """Read the model card and check the front matter the Hub needs to list and evaluate the model."""
    card = ModelCard(path.read_text())
    data = card.data.to_dict()
    missing = [field for field in REQUIRED_CARD_FIELDS if not data.get(field)]
    if missing:
        raise SystemExit(f"{path} front matter lacks {missing}: add them before publishing")
    if data["library_name"] != "bgremove_plugin":
        raise SystemExit(f"{path}: library_name must be bgremove_plugin, not {data['library_name']!r}")
    return card


def load_for_upload(weights_dir: Path) -> TiramisuNet:
    """The model as stored: float16 files stay float16 so the upload is what the package ships."""
    model = build_from_folder(weights_dir)
    with safe_open(str(weights_dir / WEIGHTS_NAME), framework="pt") as handle:
        first = next(iter(handle.keys()))
        dtype = handle.get_tensor(first).dtype
    return model.to(dtype) if dtype == torch.float16 else model


def stage(weights_dir: Path, card_path: Path, out: Path) -> list[str]:
    """Write the upload into ``out`` the way ``push_to_hub`` does; returns the file names."""
    model = load_for_upload(weights_dir)
    card = load_card(card_path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, model_card_kwargs={"card_text": str(card)})
    onnx_file = matching_onnx(weights_dir)
    if onnx_file is not None:
        shutil.copy(onnx_file, out / ONNX_NAME)
    return sorted(p.name for p in out.iterdir())


def matching_onnx(weights_dir: Path) -> Path | None:
    """The folder's ``model.onnx`` if it was exported from these very weights (a stale one is never uploaded)."""
    path = weights_dir / ONNX_NAME
    if not path.is_file():
        return None
    try:
        recorded = OnnxNet(path).fingerprint
    except BackendUnavailableError:
        return None
    return path if recorded == weights_fingerprint(build_from_folder(weights_dir)) else None


def publish(repo_id: str, weights_dir: Path, card_path: Path, *, private: bool, branch: str | None, token: str | None) -> str:
    model = load_for_upload(weights_dir)
    card = load_card(card_path)
    commit = str(
        model.push_to_hub(
            repo_id, private=private, branch=branch, token=token, commit_message="Upload bgremove weights",
            model_card_kwargs={"card_text": str(card)},
        )
    )
    onnx_file = matching_onnx(weights_dir)
    if onnx_file is not None:
        from huggingface_hub import HfApi

        # The mixin uploads config, weights and card; the ONNX graph rides along for backend="onnx".
        commit = str(HfApi(token=token).upload_file(
            path_or_fileobj=str(onnx_file), path_in_repo=ONNX_NAME, repo_id=repo_id, revision=branch,
            commit_message="Upload the ONNX export of the weights",
        ))
    return commit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-id", required=True, help="org/name on the Hub")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR, help="save_pretrained folder (default: the shipped weights)")
    parser.add_argument("--card", type=Path, default=REPO / "model_card.md")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--branch", default=None)
    parser.add_argument("--dry-run", type=Path, metavar="DIR", help="write the upload here instead of pushing")
    args = parser.parse_args(argv)
    if args.dry_run:
        files = stage(args.weights, args.card, args.dry_run)
        print(json.dumps({"repo_id": args.repo_id, "would_upload": files, "folder": str(args.dry_run)}))
        return
    url = publish(args.repo_id, args.weights, args.card, private=args.private, branch=args.branch, token=os.environ.get("HF_TOKEN"))
    print(json.dumps({"repo_id": args.repo_id, "commit": url}))


if __name__ == "__main__":
    main()
