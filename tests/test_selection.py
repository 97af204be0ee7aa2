"""Settings chosen by cross-validation over the known anomalies (bgad.selection, ``bgad fit --select``)."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bgad.app.cli import main
from bgad.config import BGADConfig
from bgad.errors import BGADError
from bgad.selection import (
    CRITERIA,
    TEMPERATURES,
    Candidate,
    Estimate,
    _HeldOut,
    deal_folds,
    scoring_candidates,
    select_settings,
)
from tests.conftest import assert_one_line, fit_command

SIZE = 32


@given(st.lists(st.sampled_from("abc"), min_size=2, max_size=40), st.integers(2, 5), st.integers(0, 3))
def test_folds_spread_every_type_and_are_balanced(groups: list[str], n_folds: int, seed: int) -> None:
    folds = deal_folds(groups, n_folds, seed)
    sizes = Counter(folds.tolist())
    assert set(sizes) <= set(range(n_folds))
    assert max(sizes.values()) - min(sizes.get(k, 0) for k in range(n_folds)) <= 1
    for group in set(groups):
        per_fold = Counter(f for f, g in zip(folds.tolist(), groups, strict=True) if g == group)
        assert max(per_fold.values()) - min(per_fold.get(k, 0) for k in range(n_folds)) <= 1


def test_candidates_start_with_the_configured_setting() -> None:
    config = BGADConfig.from_dict({"model": {"strides": [8, 16], "score_temperature": 3.0}})
    candidates = scoring_candidates(config)
    assert candidates[0] == Candidate((8, 16), 3.0)
    assert len(candidates) == len(set(candidates)) == 1 + 2 + len(TEMPERATURES)
    assert {c.strides for c in candidates} == {(8,), (16,), (8, 16)}
    assert candidates[1].apply(config).model.strides == candidates[1].strides


def _held_out(informative: int, n_normals: int = 40, n_anomalies: int = 3) -> _HeldOut:
    """Log-likelihood maps of two levels (strides 8 and 16 at a 32-px input) where only level ``informative``
    sees the defect (a square of low likelihood); the other level is noise for every image."""
    rng = np.random.default_rng(0)
    grids = {8: SIZE // 8, 16: SIZE // 16}

    def level(stride: int, n: int, defect: bool) -> torch.Tensor:
        maps = torch.from_numpy(rng.normal(0.0, 1.0, (n, grids[stride], grids[stride])).astype(np.float32))
        if defect and stride == informative:
            maps[:, :1, :1] -= 8.0
        return maps

    masks = torch.zeros(n_anomalies, SIZE, SIZE, dtype=torch.bool)
    masks[:, :informative, :informative] = True
    return _HeldOut(
        (8, 16),
        [level(s, n_normals, False) for s in (8, 16)],
        [level(s, n_anomalies, True) for s in (8, 16)],
        masks,
        None,
        None,
        np.arange(n_normals),
    )


@pytest.mark.parametrize("informative", [8, 16])
def test_rating_finds_the_level_that_sees_the_defect(informative: int) -> None:
    config = BGADConfig.from_dict({"model": {"image_size": SIZE, "strides": [8, 16]}})
    held_out = _held_out(informative)
    ratings = {c: held_out.rate(c, config) for c in scoring_candidates(config)}
    alone = ratings[Candidate((informative,), 2.0)]
    noise = ratings[Candidate((24 - informative,), 2.0)]
    assert alone["image_auroc"] == pytest.approx(1.0)
    assert noise["image_auroc"] < 0.9
    best = max(ratings, key=lambda c: np.mean(list(ratings[c].values())))
    assert informative in best.strides


def _estimate(strides: tuple[int, ...], per_fold: list[float]) -> Estimate:
    return Estimate(Candidate(strides, 2.0), tuple(dict.fromkeys(CRITERIA, value) for value in per_fold))


def test_a_candidate_must_beat_the_configured_one_beyond_noise() -> None:
    configured = _estimate((8, 16), [0.90, 0.95, 0.92])
    assert _estimate((8,), [0.93, 0.98, 0.95]).beats(configured)  # +0.03 on every fold
    assert not _estimate((8,), [0.901, 0.951, 0.921]).beats(configured)  # +0.001: below MIN_GAIN
    assert not _estimate((8,), [0.99, 0.90, 0.90]).beats(configured)  # +0.007 on average, but fold to fold noise
    assert not configured.beats(configured)


def _recording_detector(folds: list[dict[str, list[int]]]) -> type:
    """A stand-in for BGAD in select_settings that records what each fold trains on and what it is asked to score
    (every test image is filled with its own index)."""

    class Recording:
        def __init__(self, config: BGADConfig, device: str = "cpu"):
            self.record: dict[str, list[int]] = {"scored": []}
            folds.append(self.record)

        def fit(self, normals: list, anomalies: list, masks: list, progress: bool = True) -> "Recording":
            self.record["normals"] = [int(n[0, 0, 0]) for n in normals]
            self.record["anomalies"] = [int(a[0, 0, 0]) for a in anomalies]
            return self

        def level_log_probs(self, images: list) -> list[torch.Tensor]:
            self.record["scored"] += [int(image[0, 0, 0]) for image in images]
            return [torch.randn(len(images), SIZE // s, SIZE // s) for s in (8, 16)]

    return Recording


def test_every_fold_rates_only_images_its_flows_never_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Normals and anomalies are both held out: a fold's model is rated on images it was not trained on, and every
    image is rated exactly once."""
    folds: list[dict[str, list[int]]] = []
    monkeypatch.setattr("bgad.selection.BGAD", _recording_detector(folds))
    normals = [np.full((SIZE, SIZE, 3), i, np.uint8) for i in range(12)]
    anomalies = [np.full((SIZE, SIZE, 3), 100 + i, np.uint8) for i in range(6)]
    masks = [np.ones((SIZE, SIZE), bool)] * 6
    config = BGADConfig.from_dict({"model": {"image_size": SIZE, "strides": [8, 16]}})
    select_settings(normals, anomalies, masks, config, folds=3, progress=False)
    assert len(folds) == 3
    for fold in folds:
        assert not set(fold["scored"]) & (set(fold["normals"]) | set(fold["anomalies"]))
        assert len(fold["normals"]) == 8
        assert len(fold["anomalies"]) == 4
    assert sorted(v for fold in folds for v in fold["scored"]) == list(range(12)) + [100 + i for i in range(6)]


def test_select_refuses_too_few_anomalies_and_tiling() -> None:
    image, mask = np.zeros((SIZE, SIZE, 3), np.uint8), np.ones((SIZE, SIZE), bool)
    with pytest.raises(BGADError, match="at least 2 known anomalies"):
        select_settings([image] * 3, [image], [mask], BGADConfig())
    tiled = BGADConfig.from_dict({"model": {"tile_size": 64, "tile_overlap": 8}})
    with pytest.raises(BGADError, match="tiling"):
        select_settings([image] * 3, [image] * 2, [mask] * 2, tiled)


@pytest.mark.slow
def test_fit_select_records_its_choice(tiny_dataset: Path, config_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    assert main(fit_command(tiny_dataset, output, config_file, "--select", "2")) == 0
    run = json.loads((output / "run.json").read_text())
    selection = run["selection"]
    assert selection["folds"] == 2
    assert len(selection["candidates"]) == len(scoring_candidates(BGADConfig()))
    chosen = [
        c
        for c in selection["candidates"]
        if Candidate(tuple(c["strides"]), c["score_temperature"]).describe() == selection["chosen"]
    ]
    assert len(chosen) == 1
    assert run["config"]["model"]["strides"] == chosen[0]["strides"]
    assert run["config"]["model"]["score_temperature"] == chosen[0]["score_temperature"]
    assert chosen[0]["criterion"] >= selection["candidates"][0]["criterion"]
    assert all(0 <= c[key] <= 1 for c in selection["candidates"] for key in selection["criteria"])
    for candidate in selection["candidates"]:  # the folds' criteria, for judging the noise of a choice later
        assert len(candidate["criterion_per_fold"]) == 2
        assert np.mean(candidate["criterion_per_fold"]) == pytest.approx(candidate["criterion"], abs=1e-4)
    assert "cross-validation" in (output / "report.html").read_text()


@pytest.mark.parametrize("extra", [["--cv", "2"], ["--resume", "x"]])
def test_select_goes_with_a_plain_fit_only(
    tiny_dataset: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    assert main([*fit_command(tiny_dataset, tmp_path / "run", config_file, "--select"), *extra]) == 2
    assert_one_line(capsys, "--select goes with a plain fit")
