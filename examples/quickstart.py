"""bgad in Python, end to end on the synthetic demo data (about a minute on a laptop CPU).

Run: python examples/quickstart.py [OUTPUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

from bgad import BGAD, load_config
from bgad.data import load_mvtec, make_split
from bgad.data.demo import make_demo_dataset
from bgad.evaluation import evaluate

output = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bgad-quickstart-"))
make_demo_dataset(output / "data", category="demo_part")
category = load_mvtec(output / "data", "demo_part")
config = load_config("fast")
split = make_split(category, config.train)  # 10 known anomalies, stratified by defect type; the rest is evaluation
known = split.known

detector = BGAD(config).fit([s.path for s in category.train], [s.path for s in known], [s.mask_path for s in known])
detector.save(output / "model")

detector = BGAD.load(output / "model")
result = detector.predict(category.defects[-1].path)
print(f"score {result.score:.3f}, anomalous: {result.is_anomalous}, defect pixels: {int(result.mask.sum())}")
print(evaluate(detector, split.evaluation, progress=False).metrics())
