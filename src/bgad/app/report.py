"""A self-contained HTML evaluation report: metrics, ROC and PRO curves, scores per defect type, worst cases.

Figures are drawn with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``), never with pyplot, so the
caller's backend and global state are left alone. The output depends only on the inputs.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_auc_score, roc_curve

from .._version import __version__
from ..data.images import read_image, to_canvas
from ..data.samples import GOOD
from ..errors import BGADError
from ..evaluation import Evaluation
from ..method.thresholds import Thresholds, describe_operating_point
from ..metrics import pro_curve

FILES = "report_files"
REPORT_HTML = "report.html"
MAX_ROC_PIXELS = 2_000_000  # the pixel ROC curve is drawn from a fixed random sample of this many pixels
FPR_LIMIT = 0.3
CMAP = "turbo"
_METRICS = {  # key: (name, meaning); other keys of ``metrics`` are shown after these, under their own name
    "image_auroc": ("Image AUROC", "how well image scores rank anomalous above good images"),
    "pixel_auroc": ("Pixel AUROC", "how well map values rank defect above normal pixels"),
    "pixel_aupro": ("AUPRO (FPR ≤ 0.3)", "mean overlap with each defect region, up to 30 % false-positive pixels"),
    "image_ap": ("Image AP", "average precision of the image scores"),
    "pixel_ap": ("Pixel AP", "average precision of the map values (sensitive to small defects)"),
    "n_eval_images": ("Evaluated images", ""),
    "n_known_anomalies": ("Known anomalies", "anomalous images used for training (not evaluated)"),
    "train_seconds": ("Training time (s)", ""),
}
_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#f5f7fa;margin:0}
main{max-width:1160px;margin:0 auto;padding:24px 32px 48px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:36px 0 8px;border-bottom:2px solid #e4e7eb}
h3{font-size:16px;margin:24px 0 8px}.lead{color:#52606d;margin:0 0 8px}.note{color:#52606d;font-size:14px}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{padding:5px 14px;text-align:left;border-bottom:1px solid #e4e7eb}th{background:#f0f4f8;font-weight:600}
.n{text-align:right}tr:nth-child(even) td{background:#fafbfc}td.d{color:#52606d;font-size:13px}
.grid{display:flex;flex-wrap:wrap;gap:16px}.grid>.note{flex-basis:100%;margin:0}
figure{margin:0;width:fit-content;border:1px solid #e4e7eb;border-radius:6px;padding:8px}
figcaption{font-size:13px;color:#3e4c59;margin-top:4px;width:0;min-width:100%}img{display:block;max-width:100%}
code{font-size:13px;background:#f0f4f8;padding:1px 4px;border-radius:3px}.bad{color:#b42318;font-weight:600}
footer{margin-top:40px;color:#9aa5b1;font-size:12px}
"""


def _num(x: float) -> str:
    x = float(x)
    if not np.isfinite(x):
        return "n/a"
    return f"{x:.3f}" if x == 0 or 0.01 <= abs(x) < 1e5 else f"{x:.3g}"


def _plain(text: object) -> str:
    """``text`` as valid Unicode: names that are not valid UTF-8 on disk show replacement characters."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _label(text: object) -> str:
    """``text`` for a matplotlib label, shown literally: ``$`` would start math text (and can fail to parse)."""
    return _plain(text).replace("$", r"\$")


def _e(text: object) -> str:
    return html.escape(_plain(text))


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version string: same input, same bytes


def _thin(x: np.ndarray, y: np.ndarray, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ~4n points of a non-decreasing curve, keeping every step of 1/n in x or y."""
    if len(x) <= 4 * n:
        return x, y
    grid = np.linspace(0, 1, n + 1)
    keep = np.unique(np.concatenate([np.searchsorted(x, grid), np.searchsorted(y, grid), [0, len(x) - 1]]))
    keep = keep[keep < len(x)]
    return x[keep], y[keep]


def _curve(x: np.ndarray, y: np.ndarray, title: str, label: str, *, roc: bool = True) -> tuple[Figure, Axes]:
    """A square figure of a non-decreasing curve on [0, 1]^2 (a ROC curve with its chance diagonal if ``roc``)."""
    fig = Figure(figsize=(3.25, 3.2), layout="constrained")
    ax = fig.add_subplot()
    x, y = _thin(x, y)
    ax.plot(x, y, color="#1f6feb", lw=1.8, label=label)
    if roc:
        ax.plot([0, 1], [0, 1], ls=":", color="#9aa5b1", lw=1)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate")
    else:
        inside = x <= FPR_LIMIT
        ax.fill_between(x[inside], y[inside], color="#1f6feb", alpha=0.15, lw=0)
        ax.axvline(FPR_LIMIT, color="#d1242f", ls="--", lw=1.2, label=f"FPR limit {FPR_LIMIT}")
        ax.set(xlabel="false-positive rate (pixels)", ylabel="mean per-region overlap")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), title=title, aspect="equal")
    ax.grid(alpha=0.3)
    return fig, ax


def _undefined(labels: np.ndarray, values: np.ndarray, unit: str) -> str | None:
    """Why a curve of ``values`` against ``labels`` cannot be drawn, or None."""
    if not labels.any():
        return f"no anomalous {unit}" if unit == "images" else "no defect pixels in the ground-truth masks"
    if labels.all():
        return f"no good {unit}" if unit == "images" else "no normal pixels"
    if not np.isfinite(values).all():
        return f"the {'image scores' if unit == 'images' else 'anomaly maps'} contain NaN or infinite values"
    return None


def _curves(ev: Evaluation, metrics: dict[str, float | int], out: Path, threshold: float | None) -> list[str]:
    """Draws the image ROC, pixel ROC and PRO curves; returns their HTML figures (or why each is missing)."""
    parts = []
    labels = ev.labels.astype(bool)
    if why := _undefined(labels, ev.scores, "images"):
        parts.append(f'<p class="note">Image ROC curve not drawn: {why}.</p>')
    else:
        fpr, tpr, _ = roc_curve(labels, ev.scores)
        fig, ax = _curve(fpr, tpr, "Image-level ROC", f"AUROC {auc(fpr, tpr):.3f}")
        caption = f"{labels.sum()} anomalous vs {(~labels).sum()} good images, by image score."
        if threshold is not None:
            at = ev.scores > threshold
            ax.plot(at[~labels].mean(), at[labels].mean(), "o", color="#d1242f", label=f"threshold {_num(threshold)}")
            caption += " The dot is the given image threshold."
        ax.legend(loc="lower right")
        _save(fig, out / "roc_image.png")
        parts.append(_figure("roc_image.png", caption))
    maps, masks = ev.pixels()
    if why := _undefined(masks, maps, "pixels"):
        parts.append(f'<p class="note">Pixel ROC and PRO curves not drawn: {why}.</p>')
        return parts
    content = "" if ev.valid is None else " (image content only, padding left out)"
    caption = f"All {masks.size:,} pixels at the {ev.masks.shape[-1]} px model input size{content}."
    if masks.size > MAX_ROC_PIXELS:
        pick = np.sort(np.random.default_rng(0).integers(0, masks.size, MAX_ROC_PIXELS))
        caption = (
            f"Drawn from a fixed random sample of {MAX_ROC_PIXELS:,} of the {masks.size:,} pixels{content}; "
            "the pixel AUROC in the table uses all of them."
        )
        masks, maps = masks[pick], maps[pick]
    fpr, tpr, _ = roc_curve(masks, maps)
    fig, ax = _curve(fpr, tpr, "Pixel-level ROC", f"AUROC {auc(fpr, tpr):.3f}")
    ax.legend(loc="lower right")
    _save(fig, out / "roc_pixel.png")
    parts.append(_figure("roc_pixel.png", caption))
    fpr, pro = pro_curve(ev.anomaly_maps, ev.masks, valid=ev.labelled)
    value = metrics.get("pixel_aupro")
    label = "PRO" if value is None else f"AUPRO {_num(value)}"
    fig, ax = _curve(fpr, pro, "Per-region overlap (PRO)", label, roc=False)
    ax.legend(loc="lower right")
    _save(fig, out / "pro.png")
    parts.append(_figure("pro.png", f"AUPRO is the shaded area up to FPR = {FPR_LIMIT}, divided by {FPR_LIMIT}."))
    return parts


def _figure(name: str, caption: str, alt: str = "") -> str:
    return f'<figure><img src="{FILES}/{name}" alt="{_e(alt or caption)}"><figcaption>{caption}</figcaption></figure>'


def _by_type(ev: Evaluation, out: Path, threshold: float | None) -> str:
    """The per-defect-type table of image scores and a strip plot of them."""
    types = sorted({s.defect_type for s in ev.samples}, key=lambda t: (t != GOOD, t))
    groups = {t: ev.scores[[s.defect_type == t for s in ev.samples]] for t in types}
    good = groups.get(GOOD)
    head = ["defect type", "images", "min", "median", "max", "AUROC vs good"]
    head += [] if threshold is None else [f"score ≥ {_num(threshold)}"]
    rows = []
    for t, s in groups.items():
        vs_good = "—"
        if t != GOOD and good is not None and np.isfinite(np.concatenate([s, good])).all():
            vs_good = _num(roc_auc_score(np.r_[np.ones(len(s)), np.zeros(len(good))], np.concatenate([s, good])))
        cells = [len(s), _num(s.min()), _num(np.median(s)), _num(s.max()), vs_good]
        if threshold is not None:
            cells.append(f"{int((s > threshold).sum())} / {len(s)}")
        rows.append(f"<tr><td>{_e(t)}</td>" + "".join(f'<td class="n">{c}</td>' for c in cells) + "</tr>")
    fig = Figure(figsize=(7.2, 0.9 + 0.42 * len(types)), layout="constrained")
    ax = fig.add_subplot()
    for row, (t, s) in enumerate(groups.items()):
        jitter = ((np.arange(len(s)) % 5) - 2) * 0.07
        ax.plot(s, row + jitter, "o", ms=5, alpha=0.7, color="#2f9e44" if t == GOOD else "#d1242f", mec="none")
    if threshold is not None:
        ax.axvline(threshold, color="#1f2933", ls="--", lw=1, label=f"threshold {_num(threshold)}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set(yticks=range(len(types)), yticklabels=[_label(t) for t in types], ylim=(len(types) - 0.5, -0.5))
    ax.set_xlabel("image score")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, out / "scores_by_type.png")
    header = f"<th>{_e(head[0])}</th>" + "".join(f'<th class="n">{_e(h)}</th>' for h in head[1:])
    table = f"<table><tr>{header}</tr>" + "".join(rows) + "</table>"
    note = (
        '<p class="note">AUROC vs good: how well the image scores separate this type from the good images '
        "(1 = perfectly, 0.5 = chance); low values mark the hard types.</p>"
    )
    return table + note + _figure("scores_by_type.png", "Image scores per defect type (one dot per image).")


def _panel(ev: Evaluation, i: int, vmin: float, vmax: float, path: Path) -> None:
    """Input image | anomaly-map overlay with the ground-truth outline, on the shared colour scale."""
    size, input_title = ev.anomaly_maps.shape[-1], "input"
    try:
        image = np.asarray(to_canvas(read_image(ev.samples[i].path), size, ev.resize))
    except BGADError:  # the image moved: show the map on grey
        image, input_title = np.full((size, size, 3), 128, np.uint8), "input (cannot be read)"
    fig = Figure(figsize=(5.0, 2.45), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    right.imshow(image)
    amap = ev.anomaly_maps[i] if ev.valid is None else np.where(ev.valid[i], ev.anomaly_maps[i], np.nan)  # no pad
    shown = right.imshow(amap, cmap=CMAP, vmin=vmin, vmax=vmax, alpha=0.5)
    if ev.masks[i].any():
        outline = right.contour(ev.masks[i], levels=[0.5], colors="white", linewidths=1.3)
        outline.set_path_effects([patheffects.withStroke(linewidth=2.8, foreground="black")])
    for ax, title in ((left, input_title), (right, "anomaly map")):
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.colorbar(shown, ax=right, fraction=0.05, pad=0.02).ax.tick_params(labelsize=7)
    _save(fig, path)


def _gallery(ev: Evaluation, out: Path, threshold: float | None, size: int) -> str:
    labels = ev.labels.astype(bool)
    maps = ev.pixels()[0]
    maps = maps[np.isfinite(maps)]
    # Median to maximum: most of every map is normal, so starting at the median keeps the contrast for defects.
    vmin, vmax = (float(np.median(maps)), float(maps.max())) if maps.size else (0.0, 1.0)
    parts = [
        f'<p class="note">White outline: ground-truth defect. Heatmap colours use one scale for every panel, '
        f"from {_num(vmin)} (dark blue) to {_num(vmax)} (dark red): the median and the largest anomaly-map value "
        "of the whole evaluation set. An image's score is the maximum of its map.</p>"
    ]
    for kind, want, sign, title in (
        ("fp", False, -1, "Worst false positives: good images with the highest scores"),
        ("fn", True, 1, "Worst false negatives: anomalous images with the lowest scores"),
    ):
        parts.append(f"<h3>{title}</h3>")
        chosen = sorted(np.flatnonzero(labels == want), key=lambda i: (sign * ev.scores[i], i))[:size]
        if not chosen:
            parts.append(f'<p class="note">No {"anomalous" if want else "good"} images in the evaluation set.</p>')
            continue
        figures = []
        for rank, i in enumerate(chosen, 1):
            sample, score = ev.samples[i], float(ev.scores[i])
            _panel(ev, i, vmin, vmax, out / f"{kind}_{rank:02d}.png")
            caption = f"<code>{_e(sample.path.name)}</code> · {_e(sample.defect_type)} · score <b>{_num(score)}</b>"
            if threshold is not None:
                flagged = bool(score > threshold)
                outcome = {(0, 1): "false alarm", (0, 0): "not flagged (correct)", (1, 1): "detected (correct)"}
                verdict = f"{'≥' if flagged else '<'} threshold {_num(threshold)}: "
                verdict += outcome.get((want, flagged), "missed")
                caption += f'<br><span class="{"bad" if flagged != want else "ok"}">{verdict}</span>'
            figures.append(_figure(f"{kind}_{rank:02d}.png", caption, alt=f"{sample.path.name}: image and map"))
        parts.append('<div class="grid">' + "".join(figures) + "</div>")
    return "".join(parts)


def _decision_table(decisions: dict[str, Any], expected: dict[str, Any] | None) -> list[str]:
    """The verdicts at the model's thresholds: what an inspection line would see, after what the thresholds were
    expected to do (``expected``: :func:`bgad.method.thresholds.operating_point`)."""
    rows = ['<tr><th>level</th><th class="n">threshold</th>']
    rows[0] += "".join(
        f'<th class="n">{name}</th>' for name in ("precision", "recall", "F1", "FPR", "TP", "FP", "TN", "FN")
    )
    rows[0] += "</tr>"
    for level in ("image", "pixel"):
        d = decisions[level]
        cells = [_num(decisions[f"{level}_threshold"]), *(_num(d[k]) for k in ("precision", "recall", "f1", "fpr"))]
        cells += [str(d[k]) for k in ("tp", "fp", "tn", "fn")]
        rows.append(f"<tr><td>{level}</td>" + "".join(f'<td class="n">{c}</td>' for c in cells) + "</tr>")
    masks = (
        f"Masks (empty on images judged good): mean per-image IoU {_num(decisions['mask_iou'])}, F1 "
        f"{_num(decisions['mask_f1'])}; {decisions['good_images_with_masks']} good image(s) got a mask. "
        f"For reference, the best F1 any threshold reaches on this set: image {_num(decisions['image_f1_max'])}, "
        f"pixel {_num(decisions['pixel_f1_max'])}."
    )
    head = ["<h2>Decisions at the model's thresholds</h2>"]
    if expected is not None:
        sentence = f"The image threshold {_num(decisions['image_threshold'])} is {describe_operating_point(expected)}."
        head.append(f'<p class="lead">{_e(sentence)}</p>')
    return [*head, "<table>", *rows, "</table>", f'<p class="note">{masks}</p>']


def write_report(
    evaluation: Evaluation,
    metrics: dict[str, float | int],
    directory: Path,
    *,
    title: str,
    thresholds: Thresholds | None = None,
    decisions: dict[str, Any] | None = None,
    operating_point: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    gallery_size: int = 6,
) -> Path:
    """Writes directory/report.html plus its PNG figures (in directory/report_files/) and returns the HTML path.

    ``thresholds`` mark the verdicts in the figures; ``decisions`` (:meth:`Evaluation.decisions`) get a table,
    after the ``operating_point`` (:func:`bgad.method.thresholds.operating_point`) the thresholds were set for;
    ``notes`` are paragraphs under the title (how the model was made, images left out of the evaluation).
    PNG files left in ``report_files/`` by an earlier report are deleted first.
    """
    image_threshold = None if thresholds is None else thresholds.image
    ev, n = evaluation, len(evaluation.samples)
    if ev.scores.shape != (n,) or ev.anomaly_maps.shape != ev.masks.shape or ev.anomaly_maps.shape[:1] != (n,):
        raise ValueError("evaluation arrays do not match: expected scores (N,), anomaly maps and masks (N, S, S)")
    if gallery_size < 0:
        raise ValueError(f"gallery_size must be >= 0, got {gallery_size}")
    directory = Path(directory)
    out = directory / FILES
    out.mkdir(parents=True, exist_ok=True)
    for old in sorted(out.glob("*.png")):
        old.unlink()
    n_bad = int(ev.labels.sum())
    types = sorted({s.defect_type for s in ev.samples} - {GOOD})
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="lead">Evaluated on {n} images: {n - n_bad} good and {n_bad} anomalous '
        f"({len(types)} defect type{'s' * (len(types) != 1)}{': ' * bool(types)}{_e(', '.join(types))}).</p>",
        *(f'<p class="note">{_e(note)}</p>' for note in notes),
        "<h2>Metrics</h2><table>",
    ]
    body.append('<tr><th>metric</th><th class="n">value</th><th>what it measures</th></tr>')
    for key in [*(k for k in _METRICS if k in metrics), *(k for k in metrics if k not in _METRICS)]:
        name, meaning = _METRICS.get(key, (key, ""))
        value = metrics[key]
        text = str(value) if isinstance(value, (int, np.integer)) else _num(value)
        body.append(f'<tr><td>{_e(name)}</td><td class="n">{text}</td><td class="d">{_e(meaning)}</td></tr>')
    body.append("</table>")
    if any(isinstance(v, float) and not np.isfinite(v) for v in metrics.values()):
        body.append('<p class="note">n/a: undefined on this set (e.g. no anomalous or no good images).</p>')
    if decisions is not None:
        body += _decision_table(decisions, operating_point)
    if n:
        body += ["<h2>Curves</h2>", '<div class="grid">', *_curves(ev, metrics, out, image_threshold), "</div>"]
        body += ["<h2>Image scores by defect type</h2>", _by_type(ev, out, image_threshold)]
        if gallery_size:
            body += ["<h2>Hardest images</h2>", _gallery(ev, out, image_threshold, gallery_size)]
    body.append(f"<footer>Generated by bgad {_e(__version__)}.</footer>")
    page = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body><main>\n" + "\n".join(body) + "\n</main></body>\n</html>\n"
    )
    path = directory / REPORT_HTML
    path.write_text(page, encoding="utf-8")
    return path
