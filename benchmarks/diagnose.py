"""What each lever of bgad moves, on one dataset: the tables of docs/diagnosis.md.

Every variant is a real ``BGAD.fit`` with config overrides on top of the default preset (seed 0, 10 known
anomalies, stratified), evaluated like ``bgad fit`` (known anomalies left out). Backbone features of the
training and evaluation images are extracted once per (backbone, size, resize) and shared by the variants;
synthetic anomalies are extracted as in a normal fit. Besides the variants' metrics, the default model's maps are
re-scored without retraining: each level alone, other score temperatures, and Gaussian smoothing of the map.
With ``--full-resolution`` each variant's pixel metrics are also taken at every image's own resolution against the
original masks (``full_resolution``, as ``bgad fit --eval-size full``): the comparison that stays fair between
``resize`` modes, whose evaluation grids differ (a letterboxed image has fewer pixels on the input than a stretched
one, so it weighs less in the input-space pixel metrics).

Run (one at a time, on an idle machine; results are appended to OUTPUT/diagnosis.jsonl, finished variants skipped):
    python benchmarks/diagnose.py --data-root ../shared/data/mvtec_ad --category bottle --output diag/bottle
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import bgad.method.fitting
from bgad import BGAD
from bgad.app.baselines import gaussian_blur
from bgad.config import BGADConfig, TrainConfig
from bgad.data.images import content_masks, image_shape, mask_to_tensor, read_mask
from bgad.data.layouts import load_mvtec
from bgad.data.samples import make_split
from bgad.evaluation import Evaluation, full_resolution_metrics
from bgad.method.backbones import create_backbone
from bgad.method.features import extract_features
from bgad.method.scoring import anomaly_map, image_scores

VARIANTS: dict[str, dict] = {
    "default": {},
    "ML only (no labels)": {"train": {"normal_only_meta_epochs": 12, "synthesis": "none"}, "loss": {"focal": False}},
    "no focal weights": {"loss": {"focal": False}},
    "no synthesis": {"train": {"synthesis": "none"}},
    "normalization channel": {"model": {"normalization": "channel"}},
    "strides 4+8+16": {"model": {"strides": [4, 8, 16]}},
    "bgad 0.1 (channel normalization; strides 4+8+16; T 1)": {
        "model": {"normalization": "channel", "strides": [4, 8, 16], "score_temperature": 1.0}
    },
    "backbone lite1": {"model": {"backbone": "efficientnet_lite1"}},
    "backbone lite2": {"model": {"backbone": "efficientnet_lite2"}},
    "image size 320": {"model": {"image_size": 320}},
    "resize pad": {"model": {"resize": "pad"}},
    "backbone lite1 + resize pad": {"model": {"backbone": "efficientnet_lite1", "resize": "pad"}},
    "24 meta-epochs": {"train": {"meta_epochs": 24}},
    "normalizer 3": {"loss": {"normalizer": 3.0}},
    "4 coupling blocks": {"model": {"n_coupling_blocks": 4}},
    "condition 32": {"model": {"condition_dim": 32}},
}
TEMPERATURES = (1.0, 2.0, 4.0)
STRIDE_INDEX = {4: 0, 8: 1, 16: 2}


class FeatureCache:
    """Backbone features (all strides) of lists of image paths, per (backbone, size, resize)."""

    def __init__(self) -> None:
        self._store: dict[tuple, list[torch.Tensor]] = {}

    def get(self, images: list, *, image_size: int, resize: str, backbone: str) -> list[torch.Tensor]:
        key = (backbone, image_size, resize, tuple(map(str, images)))
        if key not in self._store:
            full = create_backbone(backbone, image_size)  # strides 4, 8, 16
            self._store[key] = extract_features(
                full, images, image_size=image_size, batch_size=4, resize=resize, progress=False
            )
        return self._store[key]


def _metrics(
    maps: torch.Tensor, samples, masks: torch.Tensor, valid, resize: str, seen: set[str], full: bool = False
) -> dict:
    evaluation = Evaluation(
        samples=tuple(samples),
        scores=image_scores(maps, valid).numpy(),
        anomaly_maps=maps.numpy(),
        masks=masks.numpy(),
        valid=None if valid is None else valid.numpy(),
        resize=resize,
    )
    result = evaluation.metrics().as_dict()
    per_type = evaluation.per_type_metrics(seen)
    result["per_type"] = {t: {k: round(v, 4) for k, v in m.items() if k != "seen"} for t, m in per_type.items()}
    if full:
        result["full_resolution"] = full_resolution_metrics(evaluation)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="variant names separated by commas")
    parser.add_argument("--full-resolution", action="store_true", help="pixel metrics at each image's resolution too")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.output.mkdir(parents=True, exist_ok=True)
    results_path = args.output / "diagnosis.jsonl"
    done = {json.loads(line)["variant"] for line in results_path.open()} if results_path.exists() else set()

    category = load_mvtec(args.data_root, args.category)
    split = make_split(category, TrainConfig(num_anomalies=10, seed=0))
    known, samples = split.known, split.evaluation
    train_paths = [s.path for s in category.train] + [s.path for s in known]
    eval_paths = [s.path for s in samples]
    cache = FeatureCache()
    real_extract = bgad.method.fitting.extract_features
    seen = {s.defect_type for s in known}

    for name in args.variants.split(","):
        if name in done:
            continue
        config = BGADConfig.from_dict(VARIANTS[name])
        model_config = config.model
        indices = [STRIDE_INDEX[s] for s in model_config.strides]
        features_of = dict(
            image_size=model_config.image_size, resize=model_config.resize, backbone=model_config.backbone
        )

        def cached_extract(extractor, images, _indices=indices, _features_of=features_of, **kwargs):
            if list(map(str, images)) == list(map(str, train_paths)):
                return [cache.get(images, **_features_of)[i] for i in _indices]
            return real_extract(extractor, images, **kwargs)  # synthetic anomalies: new every round

        bgad.method.fitting.extract_features = cached_extract
        start = time.perf_counter()
        detector = BGAD(config).fit(
            [s.path for s in category.train], [s.path for s in known], [s.mask_path for s in known], progress=False
        )
        seconds = time.perf_counter() - start
        bgad.method.fitting.extract_features = real_extract
        model = detector.model_
        size = (model_config.image_size, model_config.image_size)
        with torch.inference_mode():
            eval_features = [cache.get(eval_paths, **features_of)[i] for i in indices]
            level_maps = [
                torch.cat([level.log_prob_map(chunk) for chunk in feature.split(16)])
                for level, feature in zip(model.levels, eval_features, strict=True)
            ]
            maps = anomaly_map(level_maps, model.level_max, model.normal_max, size, model_config.score_temperature)
        masks = torch.stack(
            [
                mask_to_tensor(read_mask(s.mask_path), size[0], model_config.resize)
                if s.mask_path
                else torch.zeros(size, dtype=torch.bool)
                for s in samples
            ]
        )
        valid = content_masks((image_shape(p) for p in eval_paths), size[0], model_config.resize)
        record = {"variant": name, "overrides": VARIANTS[name], "train_seconds": round(seconds, 1)}
        record["metrics"] = _metrics(maps, samples, masks, valid, model_config.resize, seen, args.full_resolution)
        record["history_last"] = {k: detector.history_[-1][k] for k in ("ml", "pull", "push", "b_n", "b_a")}
        if name == "default":
            record["rescored"] = _rescored(model, level_maps, samples, masks, valid, size, seen, model_config)
        with results_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        shown = ("image_auroc", "pixel_auroc", "pixel_aupro")
        summary = {k: round(record["metrics"][k], 4) for k in shown}
        if args.full_resolution:
            summary["full_resolution"] = {k: round(v, 4) for k, v in record["metrics"]["full_resolution"].items()}
        print(json.dumps({k: record[k] for k in ("variant", "train_seconds")} | {"metrics": summary}), flush=True)


def _rescored(model, level_maps, samples, masks, valid, size, seen, model_config) -> dict:
    """The default model's evaluation maps combined in other ways: no retraining."""
    out = {}
    for stride, level_map in zip(model_config.strides, level_maps, strict=True):
        maps = torch.nn.functional.interpolate(-level_map[:, None], size=size, mode="bilinear", align_corners=True)
        out[f"stride {stride} alone"] = _metrics(maps[:, 0], samples, masks, valid, model_config.resize, seen)
    for temperature in TEMPERATURES:
        # The calibration normals' maximum (normal_max) only shifts the map by T log(normal_max): no metric changes.
        maps = anomaly_map(level_maps, model.level_max, torch.ones(()), size, temperature)
        out[f"temperature {temperature:g}"] = _metrics(maps, samples, masks, valid, model_config.resize, seen)
        if temperature == model_config.score_temperature:
            smoothed = gaussian_blur(maps, 4.0)
            out[f"temperature {temperature:g}, σ = 4 smoothing"] = _metrics(
                smoothed, samples, masks, valid, model_config.resize, seen
            )
    return {name: {k: v for k, v in m.items() if k != "per_type"} for name, m in out.items()}


if __name__ == "__main__":
    main()
