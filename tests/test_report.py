import re
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from bgad.app import report
from bgad.app.report import write_report
from bgad.data.samples import Sample
from bgad.evaluation import Evaluation
from bgad.method.thresholds import Thresholds

SIZE = 24


def make_evaluation(root: Path, layout: dict[str, int], *, seed: int = 0) -> Evaluation:
    """Real PNG files under ``root/<type>/`` and synthetic maps: defects score higher inside their mask."""
    rng = np.random.default_rng(seed)
    samples, maps, masks = [], [], []
    for defect_type, count in layout.items():
        folder = root / defect_type
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f"{defect_type}_{i:03d}.png"
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
            mask = np.zeros((SIZE, SIZE), bool)
            amap = rng.random((SIZE, SIZE), dtype=np.float32)
            if defect_type != "good":
                mask[4 + i : 10 + i, 6:12] = True
                amap[mask] += 0.5 + 0.3 * rng.random()
            mask_path = None if defect_type == "good" else folder / f"{defect_type}_{i:03d}_mask.png"  # not read
            samples.append(Sample(path, defect_type, mask_path))
            maps.append(amap)
            masks.append(mask)
    maps_array = np.stack(maps) if maps else np.zeros((0, SIZE, SIZE), np.float32)
    masks_array = np.stack(masks) if masks else np.zeros((0, SIZE, SIZE), bool)
    scores = maps_array.max(axis=(1, 2)) if maps else np.zeros(0, np.float32)
    return Evaluation(tuple(samples), scores, maps_array, masks_array)


def referenced_images(page: Path) -> list[Path]:
    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert not [s for s in sources if s.startswith(("/", "http", "file:"))]  # relative links only
    return [page.parent / s for s in sources]


def check_links(page: Path) -> list[Path]:
    """Every <img> exists, and every PNG written is on the page."""
    images = referenced_images(page)
    assert all(p.is_file() for p in images)
    assert sorted(set(images)) == sorted((page.parent / report.FILES).glob("*.png"))
    return images


def test_report_shows_metrics_curves_types_and_gallery(tmp_path: Path) -> None:
    ev = make_evaluation(tmp_path / "data", {"good": 5, "crack": 3, "scratch": 4})
    metrics = {**ev.metrics().as_dict(), "train_seconds": 12.5, "my_extra": 0.12345}
    page = write_report(
        ev, metrics, tmp_path / "out", title="Part <A&B>", thresholds=Thresholds(1.0, 0.5), gallery_size=3
    )
    assert page == tmp_path / "out" / "report.html"
    text = page.read_text()
    assert "Part &lt;A&amp;B&gt;" in text
    assert "12 images: 5 good and 7 anomalous (2 defect types: crack, scratch)" in text
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_ap", "pixel_ap"):
        assert f"{metrics[key]:.3f}" in text
    for shown in ("my_extra", "0.123", "12.500", "<td>crack</td>", "<td>scratch</td>"):
        assert shown in text
    images = check_links(page)
    names = {p.name for p in images}
    assert {"roc_image.png", "roc_pixel.png", "pro.png", "scores_by_type.png"} <= names
    assert {"fp_01.png", "fp_03.png", "fn_03.png"} <= names
    assert "fp_04.png" not in names
    worst_good = max((s, x.path.name) for s, x in zip(ev.scores, ev.samples, strict=True) if not x.is_anomalous)
    best_bad = min((s, x.path.name) for s, x in zip(ev.scores, ev.samples, strict=True) if x.is_anomalous)
    assert worst_good[1] in text
    assert best_bad[1] in text
    assert "threshold 1.000" in text
    assert all(p.stat().st_size < 200_000 for p in images)


def test_report_is_deterministic_and_replaces_old_figures(tmp_path: Path) -> None:
    ev = make_evaluation(tmp_path / "data", {"good": 3, "hole": 3})
    first = write_report(ev, ev.metrics().as_dict(), tmp_path / "a", title="t", gallery_size=2)
    second = write_report(ev, ev.metrics().as_dict(), tmp_path / "b", title="t", gallery_size=2)
    assert first.read_text() == second.read_text()
    for png in (first.parent / report.FILES).glob("*.png"):
        assert png.read_bytes() == (second.parent / report.FILES / png.name).read_bytes(), png.name
    write_report(ev, ev.metrics().as_dict(), tmp_path / "a", title="t", gallery_size=1)  # fewer panels: old ones go
    check_links(first)


@pytest.mark.parametrize(
    ("layout", "missing"),
    [
        ({"good": 3}, ["Image ROC curve not drawn: no anomalous images", "Pixel ROC and PRO curves not drawn"]),
        ({"crack": 2, "dent": 1}, ["Image ROC curve not drawn: no good images", "No good images"]),
        ({"good": 1, "crack": 1}, []),
        ({}, []),
    ],
)
def test_edge_cases_render(tmp_path: Path, layout: dict[str, int], missing: list[str]) -> None:
    ev = make_evaluation(tmp_path / "data", layout)
    metrics = {"image_auroc": float("nan"), "n_eval_images": len(ev.samples)}
    page = write_report(ev, metrics, tmp_path / "out", title="edge", gallery_size=10)
    text = page.read_text()
    assert "n/a" in text
    for message in missing:
        assert message in text
    check_links(page)


def test_pixel_curve_is_subsampled_and_missing_images_are_tolerated(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(report, "MAX_ROC_PIXELS", 1000)
    ev = make_evaluation(tmp_path / "data", {"good": 2, "crack": 2})
    ev.samples[0].path.unlink()
    page = write_report(ev, {}, tmp_path / "out", title="t", gallery_size=0)
    text = page.read_text()
    assert "fixed random sample of 1,000 of the 2,304 pixels" in text
    assert "Hardest images" not in text
    check_links(page)
    page = write_report(ev, {}, tmp_path / "out", title="t", gallery_size=2)  # the missing image is drawn grey
    assert "Hardest images" in page.read_text()
    check_links(page)


def test_leaves_pyplot_and_the_backend_alone(tmp_path: Path) -> None:
    # matplotlib.get_backend() itself may import pyplot, so the raw rcParams entry is compared instead
    had_pyplot, backend = "matplotlib.pyplot" in sys.modules, dict.__getitem__(matplotlib.rcParams, "backend")
    ev = make_evaluation(tmp_path / "data", {"good": 2, "crack": 2})
    write_report(ev, {}, tmp_path / "out", title="t", gallery_size=1)
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend


def test_rejects_inconsistent_input(tmp_path: Path) -> None:
    ev = make_evaluation(tmp_path / "data", {"good": 2})
    bad = Evaluation(ev.samples, ev.scores[:1], ev.anomaly_maps, ev.masks)
    with pytest.raises(ValueError, match="do not match"):
        write_report(bad, {}, tmp_path / "out", title="t")
    with pytest.raises(ValueError, match="gallery_size"):
        write_report(ev, {}, tmp_path / "out", title="t", gallery_size=-1)
