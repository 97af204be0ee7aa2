"""Does ``bgad fit --select`` choose well? Its cross-validated estimates next to each candidate's evaluation metrics.

For each category, on the benchmark's split for ``--seed`` (10 known anomalies drawn from the test set):

1. :func:`bgad.selection.select_settings` on what a user has (the training normals and the known anomalies):
   every candidate's cross-validated estimate and the choice;
2. for this report only, never for the choice: every candidate rescored on the evaluation images with the model
   that ``bgad benchmark`` trained on all known anomalies with the default setting (``--runs``, the benchmark's
   ``OUTPUT/runs``). Each level's flow is trained on its own loss and the score temperature only combines the
   levels' maps, so rescoring that model's per-level maps with each candidate is the candidate's model.

Prints a markdown table per category and writes the selections as JSON (``--output``). Run on an idle machine:

    python benchmarks/selection.py --data-root ../shared/data/mvtec_ad --categories bottle,transistor \\
        --runs B/runs --seed 0 --output selection_mvtec.json
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from bgad import BGAD, load_config
from bgad.data.layouts import load_mvtec
from bgad.data.samples import make_split
from bgad.evaluation import evaluate
from bgad.method.scoring import anomaly_map
from bgad.selection import CRITERIA, Candidate, select_settings


class _Rescored:
    """A fitted detector whose levels are combined as ``candidate`` says (an :class:`bgad.evaluation.AnomalyMapper`).
    The per-level maps of an image list are computed once and shared by every candidate (``cache``)."""

    def __init__(self, detector: BGAD, candidate: Candidate, cache: dict):
        self.detector, self.candidate, self.cache = detector, candidate, cache
        self.resize = detector.resize

    def anomaly_maps(self, images: list, *, batch_size: int = 4) -> torch.Tensor:
        model = self.detector.model_
        strides = list(model.config.strides)
        chosen = [strides.index(s) for s in self.candidate.strides]
        key = tuple(str(image) for image in images)
        if key not in self.cache:
            self.cache[key] = self.detector.level_log_probs(images, batch_size=batch_size)
        log_probs = self.cache[key]
        level_max = torch.stack([model.levels[i].log_prob_max for i in chosen])
        size = (model.config.image_size,) * 2
        # normal_max only shifts every map by a constant: 1 leaves every metric as it is.
        one = torch.ones(())
        return anomaly_map([log_probs[i] for i in chosen], level_max, one, size, self.candidate.score_temperature)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--categories", required=True)
    parser.add_argument("--runs", type=Path, help="bgad benchmark's OUTPUT/runs (without: no evaluation columns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--config", type=Path, help="YAML file with options over the preset, as in bgad fit")
    args = parser.parse_args()
    config = load_config(args.preset, args.config)
    config = type(config).from_dict({"train": {"seed": args.seed}}, base=config)
    records = {}
    for name in args.categories.split(","):
        split = make_split(load_mvtec(args.data_root, name), config.train)
        selection = select_settings(
            [s.path for s in split.train],
            [s.path for s in split.known],
            [s.mask_path for s in split.known],
            config,
            folds=args.folds,
            groups=[s.defect_type for s in split.known],
        )
        print(f"\n## {name}, seed {args.seed}: chose {selection.chosen.describe()} in {selection.seconds:.0f} s\n")
        header = ["CV " + key for key in CRITERIA] + ["CV mean"]
        if args.runs:
            trained, cache = BGAD.load(args.runs / name / f"seed{args.seed}"), {}
            header += ["eval " + key for key in CRITERIA]
        print("| candidate | " + " | ".join(header) + " |\n|---|" + "---:|" * len(header))
        rows = []
        for estimate in selection.estimates:
            cells = [f"{estimate.mean(key):.3f}" for key in CRITERIA] + [f"{estimate.criterion:.3f}"]
            row = {"candidate": estimate.candidate.describe()}
            if args.runs:
                rescored = _Rescored(trained, estimate.candidate, cache)
                metrics = evaluate(rescored, split.evaluation, progress=False).metrics()
                row["evaluation"] = {key: getattr(metrics, key) for key in CRITERIA}
                cells += [f"{row['evaluation'][key]:.3f}" for key in CRITERIA]
            print(f"| {row['candidate']} | " + " | ".join(cells) + " |", flush=True)
            rows.append(row)
        if args.runs:
            best_eval = max(rows, key=lambda r: statistics.fmean(r["evaluation"].values()))
            print(f"\nbest on the evaluation images (not used): {best_eval['candidate']}")
        records[name] = {"selection": selection.to_dict(), "evaluation": rows}
        args.output.write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
