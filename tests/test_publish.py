"""What `python -m train.publish` would upload, checked without network; a real push only with HF_TOKEN."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from bgremove_plugin.hub import DEFAULT_WEIGHTS_DIR
from train.publish import main as publish_main
from train.publish import stage

from .conftest import REPO

# With onnxruntime the shipped ONNX graph (checked against the weights) is uploaded beside them.
UPLOAD = ["README.md", "config.json", "model.onnx", "model.safetensors"]


def test_dry_run_stages_config_weights_and_card(tmp_path: Path) -> None:
    out = tmp_path / "staged"
    files = stage(DEFAULT_WEIGHTS_DIR, REPO / "model_card.md", out)
    assert files == UPLOAD
    assert (out / "config.json").read_text().strip() == (DEFAULT_WEIGHTS_DIR / "config.json").read_text().strip()
    shipped = load_file(str(DEFAULT_WEIGHTS_DIR / "model.safetensors"))
    uploaded = load_file(str(out / "model.safetensors"))
    assert shipped.keys() == uploaded.keys()
    for key, tensor in shipped.items():
        assert uploaded[key].dtype == tensor.dtype and torch.equal(uploaded[key], tensor), key


def test_card_front_matter_has_what_the_hub_needs(tmp_path: Path) -> None:
    stage(DEFAULT_WEIGHTS_DIR, REPO / "model_card.md", tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "bgremove_plugin"
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "image-segmentation"
    assert {"background-removal", "person-segmentation"} <= set(data["tags"])
    results = data["model-index"][0]["results"]
    metrics = {(r["dataset"]["name"], m["type"]): m["value"] for r in results for m in r["metrics"]}
    shipped = json.loads((REPO / "train" / "shipped_candidate.json").read_text())
    # The card states what train.candidate measured for the weights in the package, rounded to 3 places.
    assert metrics[("CCP test split", "mean_iou")] == round(shipped["ccp_test"]["iou"], 3)
    assert metrics[("COCO person test split", "mean_iou")] == round(shipped["coco_test"]["iou"], 3)
    assert "## Limitations and failure modes" in card.text and "python -m train.train" in card.text


def test_card_without_front_matter_is_refused(tmp_path: Path) -> None:
    card = tmp_path / "card.md"
    card.write_text("# just text\n")
    with pytest.raises(SystemExit, match="front matter lacks"):
        stage(DEFAULT_WEIGHTS_DIR, card, tmp_path / "out")


def test_cli_dry_run_prints_the_file_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish_main(["--repo-id", "org/name", "--dry-run", str(tmp_path / "o")])
    assert f'"would_upload": {json.dumps(UPLOAD)}' in capsys.readouterr().out


def test_an_onnx_file_from_other_weights_is_not_uploaded(tiny_weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    shutil.copy(DEFAULT_WEIGHTS_DIR / "model.onnx", folder / "model.onnx")
    assert "model.onnx" not in stage(folder, REPO / "model_card.md", tmp_path / "staged")


@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="opt-in: set HF_TOKEN to push to the real Hub")
def test_real_push_round_trip() -> None:  # pragma: no cover - needs the network and a token
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ["HF_TOKEN"])
    repo_id = f"{api.whoami()['name']}/bgremove-ci-{uuid.uuid4().hex[:8]}"
    try:
        publish_main(["--repo-id", repo_id, "--private"])
        assert {"README.md", "config.json", "model.safetensors"} <= set(api.list_repo_files(repo_id))
    finally:
        api.delete_repo(repo_id, missing_ok=True)
