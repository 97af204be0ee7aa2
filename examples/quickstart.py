"""bgad in Python, end to end on the synthetic demo data (about a minute on a laptop CPU).

Run: python examples/quickstart.py [OUTPUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

from bgad import BGAD, load_config
from bgad.data import evaluation_samples, select_known_anomalies
from bgad.datasets import load_mvtec
from bgad.demo_data import make_demo_dataset
from bgad.evaluation import evaluate

output = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bgad-quickstart-"))
make_demo_dataset(output / "data", category="demo_part")
category = load_mvtec(output / "data", "demo_part")
known = select_known_anomalies(category, 10, seed=0)

detector = BGAD(load_config("fast")).fit(
    [s.path for s in category.train], [s.path for s in known], [s.mask_path for s in known]
)
detector.save(output / "model")

detector = BGAD.load(output / "model")
result = detector.predict(category.defects[-1].path)
print(f"score {result.score:.3f}, anomalous: {result.is_anomalous}, defect pixels: {int(result.mask.sum())}")
print(evaluate(detector, evaluation_samples(category, known), progress=False).metrics())
