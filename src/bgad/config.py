"""Configuration: frozen dataclasses grouped as model / loss / training, named presets and YAML overrides."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from .errors import BGADError

# The choices of the string options: one Literal type each, its values derived from it for checks and the CLI.
Resize = Literal["stretch", "pad"]  # how images are fitted to the square input, see ModelConfig.resize
Normalization = Literal["position", "channel", "none"]  # how features are normalized for the flows, see ModelConfig
Synthesis = Literal["cutpaste", "nsa", "none"]  # synthetic anomalies in phase 2, see TrainConfig.synthesis
RESIZE_MODES: tuple[str, ...] = get_args(Resize)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
FEATURE_STRIDES: tuple[int, ...] = (4, 8, 16, 32)  # the feature levels every backbone offers
SYNTHESES: tuple[str, ...] = get_args(Synthesis)


@dataclass(frozen=True)
class ModelConfig:
    """What the saved model is: backbone, input size and flow architecture (reference §1-2)."""

    backbone: str = "efficientnet_lite0"
    strides: tuple[int, ...] = (8, 16)  # backbone feature levels (FEATURE_STRIDES): one flow each (docs/method.md)
    image_size: int = 256  # images are resized to image_size x image_size
    # "stretch": resize to image_size x image_size (aspect ratio not kept); "pad": scale the long side to image_size
    # and pad the short side symmetrically (letterbox). Pad pixels never affect scores, thresholds or metrics.
    resize: Resize = "stretch"
    condition_dim: int = 128  # positional-encoding channels fed to every coupling subnet
    n_coupling_blocks: int = 8
    clamp_alpha: float = 1.9  # soft clamp of the coupling log-scale: alpha * tanh(.)
    # Levels are combined as sum_l exp((ℓ_l - max_l) / T) (reference §5 has T = 1): a larger T saturates less, so
    # a level's evidence for a subtle defect counts for more (docs/diagnosis.md measures T = 1 to 6).
    score_temperature: float = 2.0
    # What the flow sees (not in the reference, see docs/method.md): "position" standardizes each channel with the
    # training normals' statistics, then whitens every position with its own Gaussian (the flow starts as the
    # per-position Gaussian and learns on top of it); "channel" only standardizes channels; "none": raw features.
    normalization: Normalization = "position"
    # Tiling for large images (bgad.data.tiles): 0 = off, the whole image is resized to image_size. Otherwise each
    # image is cut into overlapping tile_size x tile_size tiles (image pixels), each resized to image_size and
    # scored as an image (positions are inside the tile), and the maps are stitched back at the image's
    # resolution; the image score is the maximum over the whole image. tile_size = image_size keeps every pixel.
    tile_size: int = 0
    tile_overlap: int = 32  # pixels shared by neighbouring tiles, in image pixels

    def __post_init__(self) -> None:
        if self.tile_size and self.resize != "stretch":
            raise BGADError("option model.tile_size needs model.resize: stretch (tiles are squares of the image)")
        _check(
            "model",
            self,
            image_size=self.image_size >= 32,
            resize=self.resize in RESIZE_MODES,
            normalization=self.normalization in NORMALIZATIONS,
            strides=len(self.strides) > 0
            and list(self.strides) == sorted(set(self.strides))
            and set(self.strides) <= set(FEATURE_STRIDES),
            condition_dim=self.condition_dim % 4 == 0,
            n_coupling_blocks=self.n_coupling_blocks >= 1,
            clamp_alpha=self.clamp_alpha > 0,
            score_temperature=self.score_temperature > 0,
            tile_size=self.tile_size == 0 or self.tile_size >= 32,
            tile_overlap=0 <= self.tile_overlap < max(self.tile_size, 1) // 2 or self.tile_size == 0,
        )


@dataclass(frozen=True)
class LossConfig:
    """The boundary-guided semi-push-pull loss (reference §3.5)."""

    beta: float = 0.01  # the normal boundary is the beta-quantile of normal log-likelihoods
    tau: float = 0.1  # margin between the normal and the abnormal boundary (in units of ℓ / normalizer)
    normalizer: float = 10.0  # ν: rescales per-dimension log-likelihoods to about -1
    bgspp_lambda: float = 1.0  # weight of the BG-SPP term next to the maximum-likelihood term
    focal: bool = True  # asymmetric focal weights on hard normals and hard anomalies

    def __post_init__(self) -> None:
        _check(
            "loss",
            self,
            beta=0 <= self.beta < 1,
            tau=self.tau >= 0,
            normalizer=self.normalizer > 0,
            bgspp_lambda=self.bgspp_lambda >= 0,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimization schedule and few-shot protocol (reference §3.1-3.3, §4.1)."""

    meta_epochs: int = 12  # cosine learning-rate steps; meta-epoch e runs `sub_epochs` passes over the data
    sub_epochs: int = 1
    normal_only_meta_epochs: int = 1  # phase 1: maximum likelihood on normal images only
    warmup_meta_epochs: int = 2  # linear warm-up from lr/10 over the first meta-epochs, per step
    lr: float = 2e-4
    lr_min_ratio: float = 1e-3  # the cosine decays to lr * lr_min_ratio
    fiber_batch: int = 4096  # feature vectors per optimizer step (one level per step)
    # Known anomalies taken from the test set (and removed from evaluation); -1: all of them (for deployment: the
    # fit's own metrics are then undefined, cross-validation gives them).
    num_anomalies: int = 10
    anomaly_repeats: int = 5  # each known anomaly counts this many times per epoch
    # "stratified" by defect type, "random", "type:NAME" (the hard setting), or "fold:K/N": every defect outside
    # fold K of N (cross-validation; num_anomalies is then ignored).
    anomaly_sampling: str = "stratified"
    # Synthetic anomalies in phase 2: "cutpaste" (augmented known defects pasted into normal images, the
    # reference's default), "nsa" (patches of normal images Poisson-blended into others: needs no real anomaly)
    # or "none". The pool holds synthetic_repeats x known anomalies (x 10 for nsa without known anomalies).
    synthesis: Synthesis = "cutpaste"
    synthetic_repeats: int = 5
    synthesis_refresh: int = 1  # draw a new synthetic pool every this many meta-epochs
    foreground: str = "auto"  # where pastes may land: "auto" (estimated per image), "full", or a folder of masks
    extract_batch_size: int = 4  # images per backbone forward; larger is slower per image on CPU
    # BGAD.update / bgad fit --from: BG-SPP meta-epochs from the parent's flows, on a seeded sample of this fraction
    # of the parent's training normals (the new images are always trained on), with a new synthetic pool every
    # update_synthesis_refresh meta-epochs (update_meta_epochs or more: one pool); docs/deployment.md measures them.
    update_meta_epochs: int = 4
    update_normal_fraction: float = 0.5
    update_synthesis_refresh: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            "train",
            self,
            meta_epochs=self.meta_epochs >= 1,
            sub_epochs=self.sub_epochs >= 1,
            normal_only_meta_epochs=0 <= self.normal_only_meta_epochs <= self.meta_epochs,
            warmup_meta_epochs=0 <= self.warmup_meta_epochs < self.meta_epochs,
            lr=self.lr > 0,
            lr_min_ratio=0 <= self.lr_min_ratio <= 1,
            fiber_batch=self.fiber_batch >= 16,
            num_anomalies=self.num_anomalies >= -1,
            anomaly_repeats=self.anomaly_repeats >= 1,
            extract_batch_size=self.extract_batch_size >= 1,
            update_meta_epochs=self.update_meta_epochs >= 1,
            update_normal_fraction=0 < self.update_normal_fraction <= 1,
            update_synthesis_refresh=self.update_synthesis_refresh >= 1,
            anomaly_sampling=self.anomaly_sampling in ("stratified", "random")
            or self.anomaly_sampling.startswith("type:")
            or fold_of(self.anomaly_sampling) is not None,
            synthesis=self.synthesis in SYNTHESES,
            synthetic_repeats=self.synthetic_repeats >= 1,
            synthesis_refresh=self.synthesis_refresh >= 1,
        )


@dataclass(frozen=True)
class ThresholdConfig:
    """How the image and pixel decision thresholds are set after training (never from the test set)."""

    # The share of new good parts the image threshold may flag (its false-alarm rate), estimated on out-of-sample
    # normal scores (bgad.method.crossfit); the known anomalies may raise it within the estimate's sampling error.
    target_fpr: float = 0.01
    pixel_quantile: float = 0.999  # quantile of the out-of-sample normals' pixel scores
    refine_with_anomalies: bool = True  # move the thresholds towards the known anomalies' scores
    # Folds of the training normals for out-of-sample scores (bgad.method.crossfit); 0 or 1: in-sample (bgad 0.2).
    calibration_folds: int = 5

    def __post_init__(self) -> None:
        _check(
            "threshold",
            self,
            target_fpr=0 < self.target_fpr < 1,
            pixel_quantile=0 <= self.pixel_quantile <= 1,
            calibration_folds=self.calibration_folds >= 0,
        )


@dataclass(frozen=True)
class BGADConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dicts, as JSON and YAML hold them (tuples become lists)."""
        return dataclasses.asdict(self, dict_factory=lambda items: {k: _plain(v) for k, v in items})

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: BGADConfig | None = None) -> BGADConfig:
        """Build a config from nested dicts; keys not given keep the value in ``base`` (or the default)."""
        if not isinstance(data, dict):
            raise BGADError(f"a config must be a mapping of sections {[f.name for f in dataclasses.fields(cls)]}")
        base = base or cls()
        sections = {}
        for f in dataclasses.fields(cls):
            sections[f.name] = _replace(getattr(base, f.name), data.get(f.name) or {}, f.name)
        unknown = set(data) - set(sections)
        if unknown:
            raise BGADError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(sections)}")
        return cls(**sections)


def fold_of(sampling: str) -> tuple[int, int] | None:
    """``(k, n)`` of a ``"fold:k/n"`` anomaly sampling (0 <= k < n, n >= 2), else None."""
    k, slash, n = sampling.removeprefix("fold:").partition("/")
    if not sampling.startswith("fold:") or not slash or not (k.isdigit() and n.isdigit()):
        return None
    return (int(k), int(n)) if int(n) >= 2 and int(k) < int(n) else None


def _check(section: str, values: Any, **valid: bool) -> None:
    """Raise :class:`BGADError` naming the first option of ``section`` whose check is False. Every section checks
    itself when it is made, so a config is valid however it was built (YAML, JSON, a preset or Python). A float
    option that is not finite (``.inf`` in YAML, ``Infinity`` in JSON) is never valid."""
    for option in dataclasses.fields(values):
        value = getattr(values, option.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise BGADError(f"option {section}.{option.name} must be a finite number, got {value!r}")
    for name, ok in valid.items():
        if not ok:
            raise BGADError(f"option {section}.{name} has an invalid value {getattr(values, name)!r}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _replace(section: Any, values: dict[str, Any], section_name: str) -> Any:
    if not isinstance(values, dict):
        raise BGADError(f"config section {section_name!r} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(section)}
    checked = {}
    for key, value in values.items():
        if key not in fields:
            raise BGADError(f"unknown option {section_name}.{key}; expected one of {sorted(fields)}")
        expected = type(getattr(section, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is tuple and isinstance(value, list):  # JSON and YAML have lists only
            value = tuple(value)
        if type(value) is not expected or (expected is tuple and not all(type(v) is int for v in value)):
            kind = "a list of integers" if expected is tuple else expected.__name__
            raise BGADError(f"option {section_name}.{key} must be {kind}, got {value!r}")
        checked[key] = value
    return dataclasses.replace(section, **checked)


PRESETS: dict[str, dict[str, Any]] = {
    # Trains MVTec bottle in under 10 minutes on 2 CPU cores (see README for the measurement).
    "default": {},
    # The reference schedule: 25 meta-epochs x 8 sub-epochs, ~16x the default's optimizer steps.
    "paper": {"train": {"meta_epochs": 25, "sub_epochs": 8}},
    # Small and quick: the synthetic demo and smoke tests.
    "fast": {"model": {"image_size": 128}, "train": {"meta_epochs": 4, "fiber_batch": 2048}},
}


def load_config(preset: str = "default", config_file: str | Path | None = None) -> BGADConfig:
    """The preset's config, then the YAML file's values on top (same nesting as :meth:`BGADConfig.to_dict`)."""
    if preset not in PRESETS:
        raise BGADError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = BGADConfig.from_dict(PRESETS[preset])
    if config_file is None:
        return config
    path = Path(config_file)
    try:
        data = yaml.safe_load(_config_text(path))
    except OSError as err:
        raise BGADError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise BGADError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        sections = ", ".join(f.name for f in dataclasses.fields(BGADConfig))
        raise BGADError(f"config file {path} must hold a mapping of sections ({sections})")
    return BGADConfig.from_dict(data, base=config)


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; /dev/zero or a wrong file must not fill the memory


def _config_text(path: Path) -> str:
    """The text of a config file: a regular file of at most :data:`MAX_CONFIG_BYTES`, else a BGADError."""
    if path.exists() and not path.is_file():
        raise BGADError(f"config file {path} is not a regular file")
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise BGADError(f"config file {path} is over {MAX_CONFIG_BYTES} bytes: not a bgad config")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BGADError(f"config file {path} is not UTF-8 text") from None
