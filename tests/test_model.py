from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bgremove_plugin import ModelLoadError, load_model
from bgremove_plugin.hub import build_from_folder
from bgremove_plugin.model import TiramisuNet


@pytest.mark.parametrize(
    ("preset", "millions"), [("fcdensenet56", 1.4), ("fcdensenet67", 3.5), ("fcdensenet103", 9.4)]
)
def test_parameter_counts_match_the_paper(preset: str, millions: float) -> None:
    count = sum(p.numel() for p in TiramisuNet.from_preset(preset).parameters())
    assert abs(count / 1e6 - millions) / millions < 0.03, count


@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 96), (160, 96), (96, 224)])
def test_logits_have_the_input_size(height: int, width: int) -> None:
    model = TiramisuNet.from_preset("fcdensenet56").eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 2, height, width)
    assert torch.isfinite(logits).all()


def test_gradients_reach_the_first_convolution() -> None:
    model = TiramisuNet(down_layers=[2, 2], bottleneck_layers=2, growth_rate=4, first_conv_channels=8, pad_multiple=32)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 64)), torch.randint(0, 2, (2, 32, 64)))
    loss.backward()
    assert model.first_conv.weight.grad is not None and model.first_conv.weight.grad.abs().sum() > 0


def test_input_not_a_multiple_of_32_is_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        TiramisuNet.from_preset("fcdensenet56")(torch.randn(1, 3, 50, 64))


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="fcdensenet103"):
        TiramisuNet.from_preset("fcdensenet42")


def test_config_json_alone_rebuilds_the_model(tmp_path: Path) -> None:
    model = TiramisuNet.from_preset(
        "fcdensenet67", input_size=288, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], alpha_range=[0.1, 0.9]
    ).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["growth_rate"] == 16 and config["down_layers"] == [5, 5, 5, 5, 5]
    assert config["input_size"] == 288 and config["mean"] == [0.5, 0.5, 0.5] and config["pad_multiple"] == 32
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt")), "weights must be safetensors only"

    rebuilt = TiramisuNet(**config)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())
    loaded = build_from_folder(tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    assert loaded.input_size == 288 and loaded.std == [0.25, 0.25, 0.25] and loaded.alpha_range == (0.1, 0.9)


@pytest.mark.parametrize("alpha_range", [(0.5, 0.5), (0.8, 0.2), (-0.1, 0.9), (0.1, 1.5)])
def test_an_impossible_alpha_range_is_refused(alpha_range: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="alpha_range"):
        TiramisuNet(alpha_range=alpha_range)


def test_mixin_from_pretrained_round_trip(tiny_weights: Path) -> None:
    model = TiramisuNet.from_pretrained(tiny_weights, strict=True).eval()
    reference = build_from_folder(tiny_weights)
    x = torch.randn(1, 3, 64, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), reference(x))


def test_weights_that_do_not_match_the_config_are_a_clear_error(tiny_weights: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_weights / "config.json").read_text())
    config["growth_rate"] = 6
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((tiny_weights / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="does not match the architecture"):
        load_model(tmp_path)


def test_missing_key_is_refused(tiny_weights: Path, tmp_path: Path) -> None:
    state = load_file(str(tiny_weights / "model.safetensors"))
    state.pop("classifier.bias")
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_weights / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="classifier.bias"):
        load_model(tmp_path)


def test_corrupt_weights_file_is_a_clear_error(tiny_weights: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_weights / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((tiny_weights / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        load_model(tmp_path)


def test_folder_without_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_load_model_caches_per_process(tiny_weights: Path) -> None:
    assert load_model(tiny_weights) is load_model(tiny_weights)


def test_default_weights_ship_inside_the_package() -> None:
    model = load_model()
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    assert model.num_classes == 2 and model.input_size >= 128
