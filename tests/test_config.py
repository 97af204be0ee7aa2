from pathlib import Path

import pytest

from bgad.config import PRESETS, BGADConfig, LossConfig, ModelConfig, ThresholdConfig, TrainConfig, load_config
from bgad.errors import BGADError


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid(preset: str) -> None:
    assert isinstance(load_config(preset), BGADConfig)  # every section checks itself when it is made


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainConfig(anomaly_sampling="sometimes"), "train.anomaly_sampling"),
        (lambda: ModelConfig(strides=(16, 8)), "model.strides"),
        (lambda: LossConfig(beta=1.0), "loss.beta"),
        (lambda: ThresholdConfig(pixel_quantile=2.0), "threshold.pixel_quantile"),
    ],
)
def test_sections_built_in_python_are_checked_too(make, message: str) -> None:
    with pytest.raises(BGADError, match=message):
        make()


def test_paper_preset_has_the_reference_schedule() -> None:
    config = load_config("paper")
    assert (config.train.meta_epochs, config.train.sub_epochs, config.train.lr) == (25, 8, 2e-4)
    assert (config.loss.beta, config.loss.tau, config.loss.normalizer, config.loss.bgspp_lambda) == (0.01, 0.1, 10, 1)


def test_round_trip_through_dict() -> None:
    config = load_config("fast")
    assert BGADConfig.from_dict(config.to_dict()) == config


def test_yaml_overrides_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  meta_epochs: 3\nloss:\n  tau: 1\n")
    config = load_config("paper", path)
    assert config.train.meta_epochs == 3
    assert config.train.sub_epochs == 8
    assert config.loss.tau == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  meta_epoch: 3\n", "unknown option train.meta_epoch"),
        ("trian:\n  meta_epochs: 3\n", "unknown config section"),
        ("train:\n  meta_epochs: three\n", "train.meta_epochs must be int"),
        ("train:\n  meta_epochs: 0\n", "train.meta_epochs has an invalid value 0"),
        ("loss:\n  beta: 1.5\n", "loss.beta has an invalid value 1.5"),
        ("- just a list\n", "must hold a mapping"),
        ("train: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(BGADError, match=message):
        load_config("default", path)


def test_unknown_preset_and_missing_file() -> None:
    with pytest.raises(BGADError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(BGADError, match="cannot read config file"):
        load_config("default", "/nonexistent/c.yaml")
