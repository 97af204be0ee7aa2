"""New model folders made from a run without retraining it (``bgad calibrate``): the model files plus a JSON
record of how they were made, written whole or not at all, never over the source."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..detector import BGAD
from ..errors import BGADError
from ..storage.serialization import write_json
from .locking import run_lock
from .runs import partial_folder


def check_new_folder(output: Path, source: Path) -> None:
    """Raise unless ``output`` is a new or empty folder outside ``source`` (inside it, a later ``fit --overwrite``
    of the run would delete it)."""
    if output.resolve() == source.resolve():
        raise BGADError(f"the result goes into a new model folder: {output} is the run itself; name another")
    if source.is_dir() and output.resolve().is_relative_to(source.resolve()):
        raise BGADError(f"output {output} is inside {source}: put the new model folder beside the run, not in it")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise BGADError(f"output {output} already exists and is not empty: name a new folder")


def write_model_folder(detector: BGAD, output: Path, source: Path, record_name: str, record: dict[str, Any]) -> None:
    """Save ``detector`` and ``record`` (as ``record_name``) into the new folder ``output``."""
    check_new_folder(output, source)
    output.parent.mkdir(parents=True, exist_ok=True)
    with run_lock(output):
        partial = partial_folder(output)
        shutil.rmtree(partial, ignore_errors=True)
        try:
            detector.save(partial)
            write_json(partial / record_name, record)
            if output.exists():
                output.rmdir()  # empty, checked above
            partial.rename(output)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
