"""Prediction on any engine: a function from input batches to anomaly maps (torch in :mod:`bgad.detector`,
onnxruntime or OpenVINO in :mod:`bgad.deploy.export`) becomes scores, maps and masks at each image's resolution.
:class:`Predictor` gives every engine's detector the same ``anomaly_maps``, ``predict`` and ``predict_batch``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .config import BGADConfig, ModelConfig
from .data.images import BLACK, Color, ImageSource, content_box, image_to_tensor, read_image
from .method.features import image_batches
from .method.scoring import image_scores, resize_maps
from .method.thresholds import NormalTail, Thresholds, normalized_score
from .method.tiling import input_grid, stitched_map


@dataclass(frozen=True)
class Prediction:
    """The result for one image; maps and masks are at the image's original resolution."""

    score: float  # maximum of the anomaly map (bgad.method.scoring): at the model's input size, tiled: at full size
    anomaly_map: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool: anomaly_map above the pixel threshold; empty when the image is judged good
    is_anomalous: bool  # score above the image threshold
    normalized_score: float  # the score in [0, 1], 0.5 at the image threshold (bgad.method.thresholds.normalized_score)
    # The estimated share of good parts scoring this high or higher (out of sample, bgad.method.thresholds.NormalTail):
    # 0.001 is 1 good part in 1,000; None when the model stores no normal scores.
    normal_share: float | None = None


class Detector(Protocol):
    """A fitted detector on any engine, as prediction and serving use it: :class:`BGAD` (torch) or
    :class:`bgad.deploy.export.OnnxDetector` (onnxruntime, OpenVINO). ``thresholds_`` are the model's own; a caller with
    others (``--image-threshold``) passes them to :meth:`predict` and :meth:`predict_batch`."""

    thresholds_: Thresholds
    normal_scores_: np.ndarray | None

    @property
    def engine(self) -> str: ...

    @property
    def configuration(self) -> BGADConfig: ...

    @property
    def resize(self) -> str: ...

    def anomaly_maps(self, images: Sequence[ImageSource], *, batch_size: int = ...) -> Tensor: ...

    def predict(self, image: ImageSource, *, thresholds: Thresholds | None = ...) -> Prediction: ...

    def predict_batch(
        self,
        images: Sequence[ImageSource],
        *,
        batch_size: int = ...,
        mask_every_image: bool = ...,
        thresholds: Thresholds | None = ...,
    ) -> list[Prediction]: ...


@dataclass(frozen=True)
class MapEngine:
    """What prediction needs of a fitted model, whatever engine runs it."""

    maps_of_batch: Callable[[Tensor], Tensor]  # input batches (B, 3, S, S) to anomaly maps (B, S, S)
    config: ModelConfig
    pad_color: Color

    def input_batches(self, images: Sequence[ImageSource], batch_size: int) -> Iterator[Tensor]:
        """Input batches (B, 3, S, S) as the model sees them: its input size, resize mode and pad colour."""
        config = self.config
        return image_batches(
            images, image_size=config.image_size, batch_size=batch_size, resize=config.resize, fill=self.pad_color
        )


class Predictor(ABC):
    """``anomaly_maps``, ``predict`` and ``predict_batch`` of a fitted detector, from :meth:`map_engine`,
    its thresholds and its normal scores."""

    thresholds_: Thresholds
    normal_scores_: np.ndarray | None

    @abstractmethod
    def map_engine(self) -> MapEngine:
        """The engine's maps function, model configuration and pad colour (an error if not fitted)."""

    @torch.inference_mode()
    def anomaly_maps(self, images: Sequence[ImageSource], *, batch_size: int = 4) -> Tensor:
        """Anomaly maps (N, S, S) at the model's input size, on the CPU; higher = more anomalous. With
        ``resize="pad"`` they cover the whole canvas: only the :func:`bgad.data.images.content_box` is meaningful.
        A tiled model's are its stitched maps max-pooled to S x S (:func:`bgad.method.tiling.input_grid`)."""
        engine = self.map_engine()
        if engine.config.tile_size:
            return tiled_input_maps(engine.maps_of_batch, images, engine.config, batch_size, engine.pad_color)
        return torch.cat([engine.maps_of_batch(batch) for batch in engine.input_batches(images, batch_size)])

    def predict(self, image: ImageSource, *, thresholds: Thresholds | None = None) -> Prediction:
        """Score one image: its score, anomaly map and defect mask at the image's own resolution, judged by
        ``thresholds`` (default: the model's own, ``thresholds_``)."""
        return self.predict_batch([image], thresholds=thresholds)[0]

    def predict_batch(
        self,
        images: Sequence[ImageSource],
        *,
        batch_size: int = 4,
        mask_every_image: bool = False,
        thresholds: Thresholds | None = None,
    ) -> list[Prediction]:
        """:meth:`predict` for many images, ``batch_size`` at a time; ``mask_every_image`` gives images judged
        good their above-threshold pixels too (by default their mask is empty, as the verdict says)."""
        engine = self.map_engine()
        return predict_images(
            engine.maps_of_batch,
            images,
            engine.config,
            thresholds or self.thresholds_,
            self.normal_scores_,
            batch_size,
            fill=engine.pad_color,
            mask_every_image=mask_every_image,
        )


@torch.inference_mode()
def predict_images(
    maps_of_batch: Callable[[Tensor], Tensor],
    images: Sequence[ImageSource],
    config: ModelConfig,
    thresholds: Thresholds,
    normal_scores: np.ndarray | None,
    batch_size: int,
    *,
    fill: Color = BLACK,
    mask_every_image: bool = False,
) -> list[Prediction]:
    """Predictions for ``images`` given ``maps_of_batch``, a function from input batches (B, 3, S, S) to anomaly
    maps (B, S, S), with ``normal_scores`` (out-of-sample scores of good images) for the normalized score and the
    normal share.

    Shared by every inference engine (torch here, onnxruntime in :mod:`bgad.deploy.export`). Each map is cropped to
    the image's content box (the whole map with ``resize="stretch"``), scored, and resized to the image's resolution;
    a tiled model's tiles are stitched at the image's resolution and scored there. An image judged good gets an
    empty mask unless ``mask_every_image``.
    """
    predictions = []
    tail = None if normal_scores is None else NormalTail(normal_scores)
    for start in range(0, len(images), batch_size):
        pictures = [read_image(image) for image in images[start : start + batch_size]]
        for score, full in scored_maps(maps_of_batch, pictures, config, batch_size, fill):
            is_anomalous = score > thresholds.image
            predictions.append(
                Prediction(
                    score=score,
                    anomaly_map=full,
                    mask=(full > thresholds.pixel) & (is_anomalous or mask_every_image),
                    is_anomalous=is_anomalous,
                    normalized_score=normalized_score(score, thresholds.image, tail),
                    normal_share=None if tail is None else tail.share(score),
                )
            )
    return predictions


def scored_maps(
    maps_of_batch: Callable[[Tensor], Tensor],
    pictures: Sequence[Image.Image],
    config: ModelConfig,
    batch_size: int,
    fill: Color,
) -> list[tuple[float, np.ndarray]]:
    """(image score, anomaly map at the image's resolution) of each picture."""
    size = config.image_size
    if config.tile_size:
        tiling = {"tile_size": config.tile_size, "overlap": config.tile_overlap, "batch_size": batch_size}
        full_maps = [stitched_map(maps_of_batch, p, image_size=size, fill=fill, **tiling) for p in pictures]
        return [(float(full.max()), full.numpy()) for full in full_maps]
    maps = maps_of_batch(torch.stack([image_to_tensor(p, size, config.resize, fill) for p in pictures]))
    out = []
    for picture, scaled in zip(pictures, maps, strict=True):
        top, left, box_h, box_w = content_box(picture.height, picture.width, size, config.resize)
        content = scaled[None, top : top + box_h, left : left + box_w]
        full = resize_maps(content, (picture.height, picture.width))[0].numpy()
        out.append((float(image_scores(content)[0]), full))
    return out


def tiled_input_maps(
    maps_of_batch: Callable[[Tensor], Tensor],
    images: Sequence[ImageSource],
    config: ModelConfig,
    batch_size: int,
    fill: Color,
) -> Tensor:
    """A tiled model's anomaly maps on its S x S input grid (the evaluation space): stitched, then max-pooled."""
    maps = [
        input_grid(torch.from_numpy(full), config.image_size)
        for _, full in scored_maps(maps_of_batch, [read_image(i) for i in images], config, batch_size, fill)
    ]
    return torch.stack(maps)
