"""What a published version was made from, recorded in its metrics (and so its manifest): the run's options (data
flags, split, search), a sha256 of every input file, and the library versions. With them a version can be made
again: the chosen training config and the trial table are recorded beside (``config``, ``tuning``). Before, a
manifest named the data file's path only, and none of the synthetic sizes, CSV columns or filters: retraining
a version meant knowing its command line."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from trainer.config import PipelineConfig

# The distributions whose versions decide what a run computes (the pin set's).
LIBRARIES = ("recsys-retrieval", "tensorflow", "tf-keras", "tensorflow-recommenders", "scann", "numpy", "optuna",
             "implicit")
# Not recorded: where the run wrote, and its secret.
LEFT_OUT = ("registry", "model", "signing_key", "train", "pinned")


def provenance(config: PipelineConfig) -> dict[str, Any]:
    """The run's options (the chosen training config is recorded apart), its input files' sha256 and the
    libraries' versions."""
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in LEFT_OUT}
    options["data"] = dataclasses.asdict(config.data)
    options["pinned"] = config.pinned  # the training flags the command line gave, which the search left alone
    return {"options": _plain(options), "inputs": inputs(config), "libraries": _versions(),
            "python": platform.python_version()}


def inputs(config: PipelineConfig) -> dict[str, str]:
    """sha256 of every file the run read, by path: the interactions or sessions file, the catalogue, every file of
    a MovieLens folder; for one that cannot be read (gone since it was loaded), why. Taken once the data is loaded,
    before training: a file rotated during hours of training must not fail the run, nor be hashed as it is then."""
    data = config.data
    paths = [Path(p) for p in (data.data_path, data.catalog_path) if p is not None]
    if data.data_dir is not None:
        paths += sorted(p for p in Path(data.data_dir).iterdir() if p.is_file())
    return {str(p): _sha256(p) for p in paths}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return digest.hexdigest()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it (paths as strings, tuples as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value
