import json
import os
from pathlib import Path

import pytest
import torch

import bgad.method.training
from bgad import BGAD, BGADError
from bgad.config import BGADConfig
from bgad.storage.checkpoint import STATE_JSON, TrainingState, load_checkpoint, save_checkpoint

from .conftest import interrupt_at

pytestmark = pytest.mark.slow  # trains models end to end

Sources = tuple[list[Path], list[Path], list[Path]]


@pytest.fixture(scope="module")
def sources(tiny_dataset: Path) -> Sources:
    """6 normal training images and 3 known anomalies with their masks."""
    part = tiny_dataset / "part"
    normals = sorted((part / "train" / "good").glob("*.png"))[:6]
    defects = sorted(p for p in (part / "test").glob("*/*.png") if p.parent.name != "good")[:3]
    masks = [part / "ground_truth" / p.parent.name / f"{p.stem}_mask.png" for p in defects]
    return normals, defects, masks


def _config(base: BGADConfig, **train: object) -> BGADConfig:
    return BGADConfig.from_dict({"train": {"synthetic_repeats": 2, **train}}, base=base)


@pytest.mark.parametrize(
    "train",
    [
        {"meta_epochs": 3, "synthesis_refresh": 1},  # resumes at the start of a synthesis round
        {"meta_epochs": 4, "synthesis_refresh": 2},  # resumes in the middle of the round begun at meta-epoch 1
    ],
)
def test_resumed_fit_equals_uninterrupted_fit(
    sources: Sources, tiny_config: BGADConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, train: dict
) -> None:
    config = _config(tiny_config, normal_only_meta_epochs=1, synthesis="cutpaste", **train)
    whole = BGAD(config).fit(*sources, checkpoint=tmp_path / "whole", progress=False)

    checkpoint, log = tmp_path / "resumed", tmp_path / "log.jsonl"
    with monkeypatch.context() as patch:
        patch.setattr(bgad.method.training, "learning_rate", interrupt_at(meta_epoch=2, step=1))
        with pytest.raises(KeyboardInterrupt):
            BGAD(config).fit(*sources, checkpoint=checkpoint, log_path=log, progress=False)
    assert load_checkpoint(checkpoint).next_meta_epoch == 2
    log.write_text(log.read_text().splitlines(keepends=True)[0])  # as if killed before the log caught up
    resumed = BGAD(config).fit(*sources, checkpoint=checkpoint, log_path=log, progress=False)

    expected, got = whole.model_.state_dict(), resumed.model_.state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert resumed.thresholds_ == whole.thresholds_
    assert [_without_time(r) for r in resumed.history_] == [_without_time(r) for r in whole.history_]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["meta_epoch"] for r in records] == list(range(config.train.meta_epochs))


def test_fit_with_a_finished_checkpoint_trains_nothing(
    sources: Sources, tiny_config: BGADConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_config, meta_epochs=2, warmup_meta_epochs=0, synthesis="none")
    first = BGAD(config).fit(*sources, checkpoint=tmp_path, progress=False)
    monkeypatch.setattr(bgad.method.training, "learning_rate", interrupt_at(meta_epoch=0, step=0))
    again = BGAD(config).fit(*sources, checkpoint=tmp_path, progress=False)
    assert again.thresholds_ == first.thresholds_
    assert again.history_ == first.history_


def test_checkpoint_of_another_configuration_is_refused(
    sources: Sources, tiny_config: BGADConfig, tmp_path: Path
) -> None:
    config = _config(tiny_config, meta_epochs=1, warmup_meta_epochs=0, synthesis="none")
    BGAD(config).fit(sources[0][:4], checkpoint=tmp_path, progress=False)
    with pytest.raises(BGADError, match="different configuration"):
        BGAD(_config(config, lr=1e-3)).fit(sources[0][:4], checkpoint=tmp_path, progress=False)


def _without_time(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "seconds"}


def _state(next_meta_epoch: int) -> TrainingState:
    """A small but real state: a linear layer after ``next_meta_epoch`` Adam steps."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(next_meta_epoch):
        optimizer.zero_grad()
        layer(torch.randn(4, 3, generator=generator)).square().sum().backward()
        optimizer.step()
    history = [{"meta_epoch": e, "loss": float(e)} for e in range(next_meta_epoch)]
    return TrainingState(
        next_meta_epoch, layer.state_dict(), optimizer.state_dict(), generator.get_state(), history, {"a": 1}
    )


def _assert_same(a: TrainingState, b: TrainingState) -> None:
    assert (a.next_meta_epoch, a.history, a.config) == (b.next_meta_epoch, b.history, b.config)
    assert a.flows.keys() == b.flows.keys()
    assert all(torch.equal(a.flows[k], b.flows[k]) for k in a.flows)
    assert torch.equal(a.generator, b.generator)
    assert a.optimizer["state"].keys() == b.optimizer["state"].keys()
    for index, values in a.optimizer["state"].items():
        assert all(torch.equal(value, b.optimizer["state"][index][name]) for name, value in values.items())
    assert json.dumps(a.optimizer["param_groups"]) == json.dumps(b.optimizer["param_groups"])


def test_checkpoint_round_trip_keeps_one_tensor_file(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "none") is None
    save_checkpoint(_state(1), tmp_path)
    save_checkpoint(_state(2), tmp_path)
    _assert_same(load_checkpoint(tmp_path), _state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-0002.safetensors", STATE_JSON]


@pytest.mark.parametrize("failing_write", [0, 1], ids=["tensors", "json"])
def test_failed_write_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_write: int
) -> None:
    save_checkpoint(_state(1), tmp_path)
    calls = []
    original = os.replace

    def replace(source: Path, target: Path) -> None:
        calls.append(target)
        if len(calls) - 1 == failing_write:
            raise OSError("disk full")
        original(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(2), tmp_path)
    _assert_same(load_checkpoint(tmp_path), _state(1))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "state-0001.safetensors").write_bytes(b"\0" * 50), "cannot read training checkpoint tensors"),
        (lambda d: (d / "state-0001.safetensors").unlink(), "cannot read training checkpoint tensors"),
        (lambda d: (d / STATE_JSON).write_text("{not json"), "is damaged"),
        (lambda d: (d / STATE_JSON).write_text('{"format": "bgad-model"}'), "not a bgad training checkpoint"),
        (lambda d: _edit_json(d, tensors="../state-0001.safetensors"), "bad tensor file name"),
        (lambda d: _edit_json(d, next_meta_epoch=5), "is damaged"),
        (lambda d: _edit_json(d, format_version=99), "format version 99"),
        (lambda d: _edit_json(d, param_groups="lr"), "wrong types in \\['param_groups'\\]"),
        (lambda d: _edit_json(d, history="x"), "wrong types in \\['history'\\]"),
        (lambda d: _edit_json(d, history=[1]), "wrong types"),
        (lambda d: _edit_json(d, config=[]), "wrong types in \\['config'\\]"),
    ],
    ids=[
        "truncated-tensors",
        "missing-tensors",
        "bad-json",
        "foreign-json",
        "escaping-name",
        "epoch",
        "version",
        "param-groups-type",
        "history-type",
        "history-items",
        "config-type",
    ],
)
def test_damaged_checkpoint_is_a_one_line_error(tmp_path: Path, damage, message: str) -> None:
    save_checkpoint(_state(1), tmp_path)
    damage(tmp_path)
    with pytest.raises(BGADError, match=message) as error:
        load_checkpoint(tmp_path)
    assert "\n" not in str(error.value)


def _edit_json(directory: Path, **changes: object) -> None:
    description = json.loads((directory / STATE_JSON).read_text())
    (directory / STATE_JSON).write_text(json.dumps(description | changes))
