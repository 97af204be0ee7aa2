"""Running the frozen backbone over images, in small chunks (faster per image on CPU than large batches)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..data.images import BLACK, Color, ImageSource, image_to_tensor, read_image
from ..runtime.progress import progress as progress_bar
from .backbones import FeatureExtractor


def image_batches(
    images: Sequence[ImageSource], *, image_size: int, batch_size: int, resize: str = "stretch", fill: Color = BLACK
) -> Iterator[Tensor]:
    """Yield (B, 3, S, S) input tensors in [0, 1], reading and resizing ``batch_size`` images at a time (letterbox
    padding ``fill``: pass the backbone's ``pad_color``)."""
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        yield torch.stack([image_to_tensor(read_image(image), image_size, resize, fill) for image in chunk])


@torch.inference_mode()
def extract_features(
    extractor: FeatureExtractor,
    images: Sequence[ImageSource],
    *,
    image_size: int,
    batch_size: int,
    resize: str = "stretch",
    progress: bool = True,
    desc: str = "extracting features",
) -> list[Tensor]:
    """Backbone features of all ``images``: one (N, C, h, w) tensor per level, on the extractor's device."""
    levels: list[list[Tensor]] = []
    with progress_bar(total=len(images), desc=desc, unit="img", disable=not progress) as bar:
        batches = image_batches(
            images, image_size=image_size, batch_size=batch_size, resize=resize, fill=extractor.pad_color
        )
        for batch in batches:
            for level, feature in enumerate(extractor(batch.to(extractor.mean.device))):
                if level == len(levels):
                    levels.append([])
                levels[level].append(feature.clone())
            bar.update(len(batch))
    return [torch.cat(chunks) for chunks in levels]
