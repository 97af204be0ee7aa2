"""Peak memory of ``bgad fit`` with many training images (issue: keep 5,000 images at 256 px under 8 GB).

Writes a synthetic category (``bgad.data.demo``, 256 px) of 250 distinct training images, links them as N training
images (memory does not depend on whether images repeat; drawing 5,000 distinct ones takes long), then runs
``bgad fit`` on it with
the default preset but 2 meta-epochs (the peak comes from the feature cache, the cross-fitted normalization and the
whitening statistics, all before training; the schedule does not change it) under ``/usr/bin/time -v``, and prints
the peak resident memory and the wall time. Run on an idle machine:

    python benchmarks/memory_scale.py OUTPUT_DIR [N ...]     (default N: 1000 5000)
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from bgad.data.demo import make_demo_dataset


def main() -> None:
    out = Path(sys.argv[1])
    counts = [int(n) for n in sys.argv[2:]] or [1000, 5000]
    out.mkdir(parents=True, exist_ok=True)
    config = out / "two_meta_epochs.yaml"
    config.write_text(yaml.safe_dump({"train": {"meta_epochs": 2, "warmup_meta_epochs": 1}}))
    print("| training images | peak RSS GB | wall s |")
    print("|---:|---:|---:|")
    base = out / "base"
    if not (base / "part").is_dir():
        make_demo_dataset(base, category="part", n_train=250, n_test_good=10, n_test_per_defect=4, image_size=256)
    distinct = sorted((base / "part" / "train" / "good").iterdir())
    for n in counts:
        root = out / f"data_{n}"
        if not root.is_dir():
            train = root / "part" / "train" / "good"
            train.mkdir(parents=True)
            for i in range(n):
                (train / f"{i:05d}.png").symlink_to(distinct[i % len(distinct)].resolve())
            for folder in ("test", "ground_truth"):
                (root / "part" / folder).symlink_to((base / "part" / folder).resolve())
        run = out / f"run_{n}"
        command = ["bgad", "fit", "--data-root", str(root), "--category", "part", "--output", str(run)]
        command += ["--config", str(config), "--overwrite", "--quiet"]
        timed = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=True)
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timed.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", timed.stderr).group(1)
        seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
        print(f"| {n} | {peak_kb / 1024**2:.2f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
