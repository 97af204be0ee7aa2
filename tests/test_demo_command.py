import json
from pathlib import Path

import pytest

from bgad.app.cli import main


@pytest.mark.slow
def test_demo_generates_data_trains_and_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--output", str(tmp_path), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (tmp_path / "data" / "demo_part" / "train" / "good").is_dir()
    assert (tmp_path / "run" / "report.html").is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == printed
    # The synthetic defects are clearly visible; a working pipeline separates them well.
    assert printed["image_auroc"] >= 0.8
    assert printed["pixel_auroc"] >= 0.9
