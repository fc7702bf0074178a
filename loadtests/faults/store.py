"""An isolated model store for the scenarios that promote versions, and the ways to break a version.

`IsolatedStore` is a BENTOML_HOME of its own, driven through subprocesses (BentoML reads its home once
per process): save a copy of the source version (changed or not), promote it or roll back with
`python -m training`, as an operator or a retrain job would while a service follows the store's
production version (the fault suite and tests/integration/test_lifecycle.py use it).

The breakages: `truncate` cuts a file (before it is saved: its checksum is of the cut file), `rot`
flips bytes of a saved artifact in the store (bit rot after save), `randomize_largest_initializer`
overwrites an ONNX ranker's largest weight tensor with random values (the file stays valid ONNX).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runners.platform.processes import ROOT

SAVE = (
    "import json, sys; from pathlib import Path; from models import registry\n"
    "for _ in range(int(sys.argv[4])):\n"
    "    print(registry.save(Path(sys.argv[1]), {'dataset': sys.argv[2]}, json.loads(sys.argv[3])).tag)"
)
COUNT = "from models import registry; print(len(registry.listing()))"


class IsolatedStore:
    """A model store of its own (BENTOML_HOME ``home``) whose versions are copies of ``source`` saved with
    its ``metadata`` (labelled with ``dataset``); promote and rollback go through the training CLI."""

    def __init__(
        self, home: Path, source: Path, metadata: dict[str, Any], dataset: str = "synthetic"
    ) -> None:
        self.home, self.source, self.metadata, self.dataset = Path(home), Path(source), metadata, dataset
        self.env = {k: v for k, v in os.environ.items() if k != "FOLIO_MODEL_STORE"}
        self.env["BENTOML_HOME"] = str(self.home)

    def run(self, *args: str) -> str:
        """A command in the checkout with this store as BENTOML_HOME: its stdout, or RuntimeError."""
        done = subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:4])} failed: {done.stderr[-2000:]}")
        return done.stdout.strip()

    def _save(self, source: Path, copies: int, metadata: dict[str, Any]) -> list[str]:
        out = self.run(
            sys.executable, "-c", SAVE, str(source), self.dataset, json.dumps(metadata), str(copies)
        )
        return out.split()

    def save(self, **metadata_changes: object) -> str:
        return self.save_from(self.source, **metadata_changes)

    def save_from(self, source: Path, **metadata_changes: object) -> str:
        return self._save(source, 1, self.metadata | metadata_changes)[0]

    def save_copies(self, copies: int) -> list[str]:
        """``copies`` versions of the source, saved by one process."""
        return self._save(self.source, copies, self.metadata)

    def changed_copy(self, change: Callable[[Path], object]) -> str:
        """A version saved from a copy of the source with ``change`` applied first (so its checksums are
        of the changed files)."""
        with tempfile.TemporaryDirectory(dir=self.home) as tmp:
            copy = Path(tmp) / "version"
            shutil.copytree(self.source, copy, ignore=shutil.ignore_patterns("model.yaml"))
            change(copy)
            return self.save_from(copy)

    def promote(self, tag: str) -> None:
        self.run(sys.executable, "-m", "training", "promote", tag)

    def rollback(self) -> None:
        self.run(sys.executable, "-m", "training", "rollback")

    def count(self) -> int:
        return int(self.run(sys.executable, "-c", COUNT))

    def path(self, tag: str) -> Path:
        name, version = tag.split(":")
        return self.home / "models" / name / version


def truncate(path: Path, keep: float = 0.5) -> str:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
    return f"{path.name} cut from {size} to {int(size * keep)} bytes"


def rot(path: Path, nbytes: int = 64, seed: int = 0) -> str:
    """Flip every bit of ``nbytes`` bytes at random offsets in the middle half of the file."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for offset in rng.integers(len(data) // 4, 3 * len(data) // 4, size=nbytes):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"{nbytes} bytes of {path.name} inverted"


def largest_file(directory: Path, suffix: str) -> Path:
    return max(directory.glob(f"*{suffix}"), key=lambda p: p.stat().st_size)


def randomize_largest_initializer(path: Path, seed: int = 0) -> str:
    """Overwrite the largest initializer with random values of its dtype and shape (valid ONNX)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    big = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    old = numpy_helper.to_array(big)
    rng = np.random.default_rng(seed)
    if np.issubdtype(old.dtype, np.integer):
        info = np.iinfo(old.dtype)
        new = rng.integers(info.min, int(info.max) + 1, size=old.shape).astype(old.dtype)
    else:
        new = (rng.standard_normal(old.shape) * float(old.std() or 1.0)).astype(old.dtype)
    big.CopyFrom(numpy_helper.from_array(new, big.name))
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return f"{path.name}: initializer {big.name} ({old.dtype}, {old.size} values) randomized"
