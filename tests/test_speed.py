import json

import pytest

from bgad.app.cli import main
from bgad.config import load_config


@pytest.mark.slow
def test_speed_prints_well_formed_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["speed", "--preset", "fast", "--batch-size", "2", "--repeats", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ["backbone_ms", "end_to_end_ms", "ratio", "images_per_s", "train_vectors_per_s"]:
        assert report[key] > 0, key
    assert report["ratio"] == pytest.approx(report["end_to_end_ms"] / report["backbone_ms"], rel=1e-2)
    assert report["batch_2"]["batch_size"] == 2
    assert len(report["train_vectors_per_s_per_level"]) == len(load_config("fast").model.strides)
