"""Cross-fitting: out-of-sample scores for the training normals, so that thresholds hold on new good parts.

A per-position Gaussian fitted on a few hundred images (or 30) scores those images far lower than unseen ones:
in-sample Mahalanobis distances are biased down, most where channels are many and images few. Thresholds set on
such scores flag most new good parts. The normals are therefore split into K folds, and each fold's feature
vectors are normalized (channel statistics and per-position whitening, :mod:`bgad.method.whitening`) with statistics
fitted on the other folds only. The flows train on these out-of-fold vectors, and the score calibration, the
thresholds and the stored normal scores come from them; the saved model keeps the statistics fitted on all the
normals, under which a new image's vectors are distributed like the out-of-fold ones. docs/decisions.md has the
measurements.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def calibration_folds(n_images: int, n_folds: int, seed: int, owner: np.ndarray | None = None) -> Tensor | None:
    """The fold (N,) of each of ``n_images`` training inputs, balanced and shuffled by ``seed``; the tiles of one
    image (``owner``) share its fold. None (in-sample) when ``n_folds`` < 2 or there are fewer than 2 images.

    >>> calibration_folds(7, 3, seed=0).bincount().tolist()
    [3, 2, 2]
    """
    groups = np.arange(n_images) if owner is None else np.asarray(owner)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    n_folds = min(n_folds, n_groups)
    if n_folds < 2:
        return None
    order = np.random.default_rng(seed).permutation(n_groups)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[order] = np.arange(n_groups) % n_folds
    return torch.from_numpy(fold_of_group[groups])
