"""Where one ``BGAD.update`` (``bgad fit --from``) spends its time: ``cProfile`` of an update of a saved MVTec AD
run with its known anomalies plus ``--more`` test defects it did not train on. Run on an idle machine:

    python benchmarks/profile_update.py --run B/runs/transistor/seed0 --data-root ../shared/data/mvtec_ad \\
        --category transistor [--more 5] [--meta-epochs 4] [--synthesis-refresh 4]
"""

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

from bgad import BGAD
from bgad.app.record import read_run
from bgad.data.layouts import load_mvtec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder fitted on the category (only read)")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--more", type=int, default=5, help="test defects added to the run's known anomalies")
    parser.add_argument("--meta-epochs", type=int, help="default: the run's train.update_meta_epochs")
    parser.add_argument("--synthesis-refresh", type=int, help="default: the run's train.update_synthesis_refresh")
    parser.add_argument("--lines", type=int, default=45, help="rows of the profile to print")
    args = parser.parse_args()
    known = set(read_run(args.run / "run.json").known_anomalies)
    category = load_mvtec(args.data_root, args.category)
    defects = [s for s in category.test if s.is_anomalous]
    added = [s for s in defects if category.relative(s.path) not in known][: args.more]
    anomalies = [s for s in defects if category.relative(s.path) in known] + added
    parent = BGAD.load(args.run)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    parent.update(
        [s.path for s in category.train],
        [s.path for s in anomalies],
        [s.mask_path for s in anomalies],
        meta_epochs=args.meta_epochs,
        synthesis_refresh=args.synthesis_refresh,
        progress=False,
    )
    profile.disable()
    print(f"update: {time.perf_counter() - start:.1f} s, {len(anomalies)} known anomalies", file=sys.stderr)
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.lines)


if __name__ == "__main__":
    main()
