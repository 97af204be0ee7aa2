from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import settings
from PIL import Image

import bgad.method.training
from bgad.config import BGADConfig
from bgad.data.demo import make_demo_dataset

# Property tests draw the same examples on every run: CI stays reproducible; a failure found once stays found.
settings.register_profile("bgad", derandomize=True, deadline=None)
settings.load_profile("bgad")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic MVTec-layout category at 64 px: returns the data root (category 'part')."""
    root = tmp_path_factory.mktemp("data")
    make_demo_dataset(root, category="part", n_train=12, n_test_good=4, n_test_per_defect=3, image_size=64, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_config() -> BGADConfig:
    """Seconds-long training on :func:`tiny_dataset`."""
    return BGADConfig.from_dict(
        {
            "model": {"image_size": 64, "n_coupling_blocks": 2},
            "train": {"meta_epochs": 3, "fiber_batch": 256, "num_anomalies": 3, "extract_batch_size": 8},
        }
    )


def write_category(root: Path, layout: dict[str, int], *, size: int = 32, masks: bool = True) -> Path:
    """Write an MVTec-layout category with ``layout`` = {"train": n, "good": n, "<defect type>": n, ...}."""
    rng = np.random.default_rng(0)
    category = root / "cat"
    for folder, count in layout.items():
        image_dir = category / "train" / "good" if folder == "train" else category / "test" / folder
        image_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(image_dir / f"{i:03d}.png")
            if folder not in ("train", "good") and masks:
                mask_dir = category / "ground_truth" / folder
                mask_dir.mkdir(parents=True, exist_ok=True)
                mask = np.zeros((size, size), np.uint8)
                mask[4:8, 4:8] = 255
                Image.fromarray(mask).save(mask_dir / f"{i:03d}_mask.png")
    return category


@pytest.fixture(scope="session")
def config_file(tmp_path_factory: pytest.TempPathFactory, tiny_config: BGADConfig) -> Path:
    """:func:`tiny_config` as a YAML file, for the command line's ``--config``."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config.to_dict()))
    return path


def fit_command(data_root: Path, output: Path, config_file: Path, *extra: str) -> list[str]:
    """``bgad fit`` arguments for category 'part' of ``data_root``, without progress bars."""
    location = ["--data-root", str(data_root), "--category", "part", "--output", str(output)]
    return ["fit", *location, "--config", str(config_file), "--quiet", *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes: what a command must leave unchanged."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line(capsys: pytest.CaptureFixture[str], needle: str = "") -> str:
    """The captured stderr is one line (no traceback) containing ``needle``; returns it."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    return err


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder fitted by the command line on :func:`tiny_dataset` (3 known anomalies). Tests that change its
    files work on a copy."""
    from bgad.app.cli import main

    output = tmp_path_factory.mktemp("runs") / "run"
    assert main(fit_command(tiny_dataset, output, config_file)) == 0
    return output


def interrupt_at(meta_epoch: int, step: int = 1):
    """A stand-in for :func:`bgad.method.training.learning_rate` that raises KeyboardInterrupt (Ctrl-C) at one step
    of one meta-epoch: ``monkeypatch.setattr(bgad.method.training, "learning_rate", interrupt_at(2))``."""
    original = bgad.method.training.learning_rate

    def learning_rate(config, epoch: int, at: int, steps: int) -> float:
        if (epoch, at) == (meta_epoch, step):
            raise KeyboardInterrupt
        return original(config, epoch, at, steps)

    return learning_rate
