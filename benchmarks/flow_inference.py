"""Flows at inference, before and after a change: per image, the backbone alone, the flows
(``BGADModel.level_log_probs`` on the backbone's features) and the whole model (``model(images)``), for two versions
of bgad, or two model configurations, in one process, interleaved.

    git worktree add /tmp/bgad-before 1ad20f8    # the version to compare with
    OMP_NUM_THREADS=1 python benchmarks/flow_inference.py --before /tmp/bgad-before/src
    OMP_NUM_THREADS=1 python benchmarks/flow_inference.py --config smaller_flows.yaml

The installed ``bgad`` is "after". With ``--before`` (the ``src`` folder of another checkout, imported under another
name) both models are the default configuration (256 px, EfficientNet-Lite0), with the same weights; with
``--config`` (a YAML of overrides, e.g. ``model: {n_coupling_blocks: 4}``) "before" is the default configuration
and "after" the overridden one, both of the installed bgad (their maps differ: no map difference is reported).
Models are untrained (timings do not depend on the weights) and calibrated on random images. Every round times each
measurement once for both (median of ``--repeats`` calls after warm-up), alternating, so that a background load
slows both alike; the table gives the medians over ``--rounds`` rounds and the largest difference between the two
versions' anomaly maps.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn

from bgad.app.speed import median_seconds
from bgad.config import BGADConfig
from bgad.method.model import BGADModel
from bgad.method.scoring import calibrate

BEFORE = "bgad_before"


def before_model(src: Path, state: dict[str, torch.Tensor]) -> nn.Module:
    """The default model of the bgad package under ``src`` (imported as ``bgad_before``), with weights ``state``."""
    spec = importlib.util.spec_from_file_location(BEFORE, src / "bgad" / "__init__.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no bgad package under {src}")
    sys.modules[BEFORE] = package = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package)  # bgad's own imports are relative: they resolve inside bgad_before
    config = importlib.import_module(f"{BEFORE}.config").BGADConfig()
    model = importlib.import_module(f"{BEFORE}.model").BGADModel(config.model).eval()
    model.load_state_dict(state)
    return model


@torch.inference_mode()
def calibrated(model: BGADModel) -> BGADModel:
    """``model`` with calibration constants from a few random images (else its maps would be infinite)."""
    images = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    size, temperature = (model.config.image_size,) * 2, model.config.score_temperature
    level_max, normal_max = calibrate(model.level_log_probs(model.extractor(images)), size, None, temperature)
    for level, value in zip(model.levels, level_max, strict=True):
        level.log_prob_max.copy_(value)
    model.normal_max.copy_(normal_max)
    return model


def measure(
    models: dict[str, nn.Module], batch: int, rounds: int, repeats: int, *, same_weights: bool
) -> dict[str, float]:
    """Milliseconds per image, medians over rounds: the backbone, and each version's flows and end to end."""
    images = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    features = models["after"].extractor(images)
    timed: dict[str, Callable[[], object]] = {"backbone": lambda: models["after"].extractor(images)}
    for name, model in models.items():
        timed[f"flows {name}"] = lambda model=model: model.level_log_probs(features)
        timed[f"end to end {name}"] = lambda model=model: model(images)
    times = defaultdict(list)
    for _ in range(rounds):
        for key, fn in timed.items():
            times[key].append(1000 * median_seconds(fn, repeats=repeats, warmup=2) / batch)
    medians = {key: statistics.median(values) for key, values in times.items()}
    maps = {name: model(images) for name, model in models.items()}
    medians["max map diff"] = float((maps["before"] - maps["after"]).abs().max()) if same_weights else float("nan")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    compared = parser.add_mutually_exclusive_group(required=True)
    compared.add_argument("--before", type=Path, help="the src folder of the bgad version to compare")
    compared.add_argument("--config", type=Path, help="a YAML of overrides: the configuration to compare")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.before:
        after = calibrated(BGADModel(BGADConfig().model).eval())
        models = {"before": before_model(args.before, after.state_dict()), "after": after}
    else:
        overridden = BGADConfig.from_dict(yaml.safe_load(args.config.read_text()))
        configs = {"before": BGADConfig(), "after": overridden}
        models = {name: calibrated(BGADModel(config.model).eval()) for name, config in configs.items()}
    print(
        "| batch | backbone ms | flows before | flows after | end to end before | end to end after "
        "| ratio before | ratio after | max map diff |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for batch in args.batch_sizes:
        with torch.inference_mode():
            m = measure(models, batch, args.rounds, args.repeats, same_weights=args.before is not None)
        backbone = m["backbone"]
        print(
            f"| {batch} | {backbone:.1f} | {m['flows before']:.1f} | {m['flows after']:.1f} "
            f"| {m['end to end before']:.1f} | {m['end to end after']:.1f} | {m['end to end before'] / backbone:.2f} "
            f"| {m['end to end after'] / backbone:.2f} | {m['max map diff']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
