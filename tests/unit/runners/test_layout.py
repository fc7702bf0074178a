"""The layout's one rule: serving (service.py, runners/) imports models/ and runners/ only, never training
or the benchmarks, and pulls in no torch; the Bento ships no training code."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.paths import ROOT

PROBE = """
import importlib, json, pkgutil, sys
import runners
from runners.serving import fleet
fleet.primary_tag = lambda settings: "folio:stand-in"  # imported, never started: no stored version needed
import service
for m in pkgutil.walk_packages(runners.__path__, "runners."):
    if m.name != "runners.triton.backend_model":  # runs inside Triton, with its own imports
        importlib.import_module(m.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_serving_imports_neither_training_nor_benchmarks_nor_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "runners.serving.fleet" in loaded and "models.version" in loaded  # the probe saw the tree
    banned = [m for m in loaded if m.split(".")[0] in ("training", "loadtests", "torch", "tests")]
    assert banned == []


def test_the_bento_ships_service_models_and_runners_only() -> None:
    include = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    assert not any(p.startswith(("training", "loadtests", "tests")) for p in include), include
    assert {"service.py", "models/*.py", "runners/**/*.py"} <= set(include)
