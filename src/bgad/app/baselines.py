"""One-class floors for the benchmark: per-position Gaussians of the same frozen backbone features BGAD uses.

They answer whether the flows (and the known anomalies) beat a plain per-position Gaussian. Normal images only.

- :class:`GaussianBaseline`: one Gaussian per level (strides 4, 8, 16) and position; the map is the sum over levels
  of the upsampled Mahalanobis distance divided by ``sqrt(C_level)``, not smoothed.
- :class:`PadimBaseline`: PaDiM's recipe (Defard et al., 2021) on this backbone: the stride-16 map upsampled
  (nearest) onto the stride-8 grid and concatenated with it, one Gaussian per position of the concatenation, the
  Mahalanobis map upsampled and smoothed with a Gaussian of σ = 4 pixels.
- :class:`UnsmoothedPadim`: the same without smoothing, the strongest floor known on the surface data, and
  :class:`UnsmoothedPadimImagenet`: that with ImageNet input scaling instead of the backbone's own
  (:data:`bgad.method.backbones.INPUT_SCALINGS`), so the benchmark shows what the input scaling alone does.

Unlike PaDiM there is no random channel subsampling: the levels are small (24-112 channels for EfficientNet-Lite0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import BGADConfig
from ..data.images import ImageSource
from ..errors import BGADError
from ..method.backbones import create_backbone
from ..method.crossfit import calibration_folds
from ..method.features import extract_features, image_batches

EPSILON = 0.01  # covariance regularization (PaDiM): cov + EPSILON * I


def fit_gaussians(vectors: Tensor, epsilon: float = EPSILON) -> tuple[Tensor, Tensor]:
    """Mean (P, C) and precision (P, C, C) per position from vectors (N, P, C); covariance + epsilon * I."""
    n, _, c = vectors.shape
    vectors = vectors.double()
    mean = vectors.mean(dim=0)
    centered = vectors - mean
    covariance = torch.einsum("npc,npd->pcd", centered, centered) / max(n - 1, 1)
    covariance += epsilon * torch.eye(c, dtype=covariance.dtype)
    precision = torch.cholesky_inverse(torch.linalg.cholesky(covariance))
    return mean.float(), precision.float()


def mahalanobis(vectors: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """Mahalanobis distances (B, P) of vectors (B, P, C) to per-position Gaussians (P, C), (P, C, C)."""
    diff = vectors - mean
    squared = (torch.einsum("bpc,pcd->bpd", diff, precision) * diff).sum(dim=-1)
    return squared.clamp_min(0).sqrt()


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Blur maps (B, H, W) with a Gaussian of ``sigma`` pixels truncated at 4 sigma, mirrored at the borders
    (``scipy.ndimage.gaussian_filter(mode="mirror")``)."""
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))[:, 0]


def _positions_last(feature: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h*w, C)."""
    return feature.flatten(2).transpose(1, 2)


class GaussianBaseline:
    """Per-position Gaussian of each backbone level, distances summed over levels; same API as BGAD's maps.

    Fitted state: ``extractor_``, ``means_`` (per level (P, C)), ``precisions_`` (per level (P, C, C)),
    ``normal_maps_`` (N, S, S), ``train_seconds_``.
    """

    strides: tuple[int, ...] = (4, 8, 16)
    smoothing_sigma: float = 0.0  # pixels; 0 = no smoothing
    input_scaling: str | None = None  # None: the backbone's own (bgad.method.backbones.INPUT_SCALINGS)

    def __init__(self, config: BGADConfig | None = None, *, epsilon: float = EPSILON):
        self.config = config
        self.epsilon = epsilon

    @property
    def _config(self) -> BGADConfig:
        return self.config or BGADConfig()

    @property
    def resize(self) -> str:
        """How images are fitted to the square input (:attr:`bgad.config.ModelConfig.resize`)."""
        return self._config.model.resize

    def fit(self, normal_images: Sequence[ImageSource], *, progress: bool = False) -> GaussianBaseline:
        """Fit one Gaussian per level and position on the features of normal images; ``normal_maps_`` are the
        normals' out-of-fold maps (:mod:`bgad.method.crossfit`), for thresholds set as BGAD's are."""
        if len(normal_images) == 0:
            raise BGADError("fit needs at least one normal image")
        config = self._config
        start = time.perf_counter()
        self.extractor_ = create_backbone(
            config.model.backbone, config.model.image_size, self.strides, input_scaling=self.input_scaling
        )
        features = self._levels(
            extract_features(
                self.extractor_,
                list(normal_images),
                image_size=config.model.image_size,
                batch_size=config.train.extract_batch_size,
                resize=self.resize,
                progress=progress,
            )
        )
        self.means_, self.precisions_ = self._gaussians(features)
        folds = calibration_folds(len(normal_images), config.threshold.calibration_folds, config.train.seed)
        size = (config.model.image_size, config.model.image_size)
        if folds is None:
            self.normal_maps_ = self._maps(features, self.means_, self.precisions_, size)
        else:
            self.normal_maps_ = torch.empty(len(normal_images), *size)
            for fold in folds.unique():
                held = folds == fold
                means, precisions = self._gaussians([f[~held] for f in features])
                self.normal_maps_[held] = self._maps([f[held] for f in features], means, precisions, size)
        self.train_seconds_ = time.perf_counter() - start
        return self

    def _gaussians(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Means and precisions, one per level, of features (N, C, h, w)."""
        gaussians = [fit_gaussians(_positions_last(f), self.epsilon) for f in features]
        return [mean for mean, _ in gaussians], [precision for _, precision in gaussians]

    @torch.inference_mode()
    def maps_from_tensor(self, images: Tensor) -> Tensor:
        """Images (B, 3, S, S) in [0, 1] -> anomaly maps (B, S, S); higher = more anomalous."""
        if not hasattr(self, "means_"):
            raise BGADError("this GaussianBaseline is not fitted yet: call fit() first")
        features = self._levels(self.extractor_(images))
        return self._maps(features, self.means_, self.precisions_, images.shape[-2:])

    def _maps(
        self, features: list[Tensor], means: list[Tensor], precisions: list[Tensor], size: tuple[int, int]
    ) -> Tensor:
        total = None
        for feature, mean, precision in zip(features, means, precisions, strict=True):
            b, c, h, w = feature.shape
            distance = mahalanobis(_positions_last(feature), mean, precision).view(b, 1, h, w) / math.sqrt(c)
            up = F.interpolate(distance, size=size, mode="bilinear", align_corners=True)[:, 0]
            total = up if total is None else total + up
        return gaussian_blur(total, self.smoothing_sigma) if self.smoothing_sigma else total

    def anomaly_maps(self, images: Sequence[ImageSource], *, batch_size: int = 4) -> Tensor:
        """Anomaly maps (N, S, S) at the model's input size, on the CPU (same contract as ``BGAD.anomaly_maps``)."""
        batches = image_batches(
            images,
            image_size=self._config.model.image_size,
            batch_size=batch_size,
            resize=self.resize,
            fill=self.extractor_.pad_color,
        )
        return torch.cat([self.maps_from_tensor(batch) for batch in batches])

    def _levels(self, features: list[Tensor]) -> list[Tensor]:
        """The feature maps the Gaussians are fitted on: the backbone's levels as they are."""
        return features


class PadimBaseline(GaussianBaseline):
    """PaDiM on this backbone: strides 8 and 16 concatenated on the stride-8 grid, maps smoothed with σ = 4."""

    strides = (8, 16)
    smoothing_sigma = 4.0

    def _levels(self, features: list[Tensor]) -> list[Tensor]:
        fine, coarse = features
        return [torch.cat([fine, F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")], dim=1)]


class UnsmoothedPadim(PadimBaseline):
    """PaDiM's Gaussians on strides 8 + 16 without smoothing (the map's maximum is the image score)."""

    smoothing_sigma = 0.0


class UnsmoothedPadimImagenet(UnsmoothedPadim):
    """:class:`UnsmoothedPadim` with ImageNet input scaling, whatever the backbone was trained with."""

    input_scaling = "imagenet"
