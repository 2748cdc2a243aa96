"""FC-DenseNet ("The One Hundred Layers Tiramisu", Jégou et al., 2017) for person segmentation.

The constructor takes only JSON-serialisable arguments, so the ``config.json`` written by
``save_pretrained`` rebuilds the network and carries the preprocessing it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

__all__ = ["PRESETS", "TiramisuNet"]

# Layer counts from Table 2 of the paper; the up path mirrors the down path.
PRESETS: dict[str, dict[str, Any]] = {
    "fcdensenet56": {"down_layers": [4, 4, 4, 4, 4], "bottleneck_layers": 4, "growth_rate": 12},
    "fcdensenet67": {"down_layers": [5, 5, 5, 5, 5], "bottleneck_layers": 5, "growth_rate": 16},
    "fcdensenet103": {"down_layers": [4, 5, 7, 10, 12], "bottleneck_layers": 15, "growth_rate": 16},
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _DenseLayer(nn.Sequential):
    def __init__(self, in_channels: int, growth_rate: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth_rate, kernel_size=3, padding=1, bias=True),
            nn.Dropout(dropout),
        )


class _DenseBlock(nn.Module):
    """Each layer sees the concatenation of the block input and all earlier layers' outputs.

    ``keep_input`` decides whether the block returns its input alongside the new feature maps:
    the paper drops the input on the up path so that the number of channels does not explode.
    """

    def __init__(self, in_channels: int, n_layers: int, growth_rate: int, dropout: float, *, keep_input: bool) -> None:
        super().__init__()
        self.keep_input = keep_input
        self.layers = nn.ModuleList(
            _DenseLayer(in_channels + i * growth_rate, growth_rate, dropout) for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features if self.keep_input else features[1:], dim=1)


class _TransitionDown(nn.Sequential):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=1, bias=True),
            nn.Dropout(dropout),
            nn.MaxPool2d(2),
        )


class TiramisuNet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="bgremove_plugin",
    pipeline_tag="image-segmentation",
    license="apache-2.0",
    tags=["background-removal", "person-segmentation", "fc-densenet", "tiramisu"],
    repo_url="https://github.com/bgremove/bgremove",
    paper_url="https://arxiv.org/abs/1611.09326",
):
    """FC-DenseNet that maps an RGB image to per-pixel class logits (0 = background, 1 = person).

    Args:
        down_layers: dense layers in each down-path block; the up path mirrors it.
        bottleneck_layers: dense layers in the bottleneck block.
        growth_rate: feature maps added by each dense layer.
        first_conv_channels: filters of the first 3x3 convolution.
        dropout: dropout after every convolution.
        num_classes: output channels of the 1x1 classifier.
        input_size: working resolution: the long side the image is resized to before inference.
        mean: per-channel mean used to normalise RGB values in [0, 1].
        std: per-channel standard deviation used with ``mean``.
        pad_multiple: height and width are padded to a multiple of this (2 ** number of pools).
        alpha_range: person probabilities at or below ``alpha_range[0]`` become alpha 0, at or above
            ``alpha_range[1]`` alpha 1, linearly in between; fitted per set of weights so that confident
            pixels are fully opaque or transparent (no haze) while edges stay soft.

    Example:
        >>> net = TiramisuNet.from_preset("fcdensenet56")
        >>> net(torch.zeros(1, 3, 64, 96)).shape
        torch.Size([1, 2, 64, 96])
    """

    def __init__(
        self,
        *,
        down_layers: Sequence[int] = (4, 4, 4, 4, 4),
        bottleneck_layers: int = 4,
        growth_rate: int = 12,
        first_conv_channels: int = 48,
        dropout: float = 0.2,
        num_classes: int = 2,
        input_size: int = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pad_multiple: int = 32,
        alpha_range: Sequence[float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        low, high = (float(v) for v in alpha_range)
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"alpha_range must be two probabilities low < high in [0, 1], got {list(alpha_range)}")
        if pad_multiple % (2 ** len(down_layers)) != 0:
            raise ValueError(
                f"pad_multiple={pad_multiple} must be a multiple of 2**{len(down_layers)} "
                "so that every pooling step sees an even size"
            )
        self.down_layers = list(down_layers)
        self.input_size = int(input_size)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.pad_multiple = int(pad_multiple)
        self.alpha_range = (low, high)
        self.num_classes = int(num_classes)

        self.first_conv = nn.Conv2d(3, first_conv_channels, kernel_size=3, padding=1, bias=True)
        channels = first_conv_channels
        skip_channels: list[int] = []
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        for n_layers in self.down_layers:
            self.down_blocks.append(_DenseBlock(channels, n_layers, growth_rate, dropout, keep_input=True))
            channels += n_layers * growth_rate
            skip_channels.append(channels)
            self.transitions_down.append(_TransitionDown(channels, dropout))

        self.bottleneck = _DenseBlock(channels, bottleneck_layers, growth_rate, dropout, keep_input=False)
        upsampled = bottleneck_layers * growth_rate

        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        up_layers = list(reversed(self.down_layers))
        for i, (n_layers, skip) in enumerate(zip(up_layers, reversed(skip_channels))):
            self.transitions_up.append(
                nn.ConvTranspose2d(upsampled, upsampled, kernel_size=3, stride=2, padding=1, output_padding=1)
            )
            block_in = upsampled + skip
            is_last = i == len(up_layers) - 1
            self.up_blocks.append(_DenseBlock(block_in, n_layers, growth_rate, dropout, keep_input=is_last))
            upsampled = n_layers * growth_rate
            channels = block_in + upsampled if is_last else upsampled

        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1, bias=True)
        self._init_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TiramisuNet:
        """Build a paper variant by name: ``fcdensenet56``, ``fcdensenet67`` or ``fcdensenet103``."""
        key = name.lower().replace("-", "").replace("_", "")
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})

    def generate_model_card(self, *args: Any, card_text: str | None = None, **kwargs: Any) -> ModelCard:
        """The card ``save_pretrained``/``push_to_hub`` write as README.md.

        ``card_text`` (pass it through ``model_card_kwargs``) is the project's full model card with
        measured metrics; without it the mixin's generic card is used.
        """
        if card_text is not None:
            return ModelCard(card_text)
        return super().generate_model_card(*args, **kwargs)

    def probability_to_alpha(self, probability: torch.Tensor) -> torch.Tensor:
        """Map person probabilities onto alpha through ``alpha_range`` (a new tensor, clamped to [0, 1])."""
        low, high = self.alpha_range
        return ((probability - low) / (high - low)).clamp(0.0, 1.0)

    def _init_weights(self) -> None:
        # He-uniform, as in the paper's reference implementation.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes, H, W); H and W must be multiples of ``pad_multiple``."""
        height, width = x.shape[-2:]
        if height % self.pad_multiple or width % self.pad_multiple:
            raise ValueError(
                f"input height and width must be multiples of {self.pad_multiple}, got {height}x{width}; "
                "pad the image first (bgremove_plugin.transforms.pad_to_multiple does this)"
            )
        x = self.first_conv(x)
        skips = []
        for block, down in zip(self.down_blocks, self.transitions_down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.transitions_up, self.up_blocks, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.classifier(x)
