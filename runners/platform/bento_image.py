"""The Bento's runtime image: the pinned serving closure in ``deploy/requirements/`` (dependencies are
declared once, in pyproject.toml; the lock files pin them and everything they pull in).

``FOLIO_IMAGE_FLAVOUR`` at `bentoml build` time picks the flavour:

* ``cpu`` (default): ``python:3.11-slim`` with ``deploy/requirements/serving-cpu.txt`` (faiss-cpu,
  onnxruntime, and nvidia-pytriton, which carries the tritonserver binary the embedded ranking stage
  starts).
* ``gpu``: a CUDA runtime base image with ``deploy/requirements/serving-gpu.txt`` (faiss-gpu,
  onnxruntime-gpu in place of their CPU builds). Pair it with an NGC Triton serving the ``--target gpu``
  repository (deploy/README.md).

The image installs exactly the pinned lines (``name==version``), never a fresh resolution of the
pyproject ranges. ``python scripts/audit.py lock`` writes the lock files from the environment (cpu) and
from pip's resolver with the cpu pins as constraints (gpu); ``bento_image`` refuses a lock that no
longer covers pyproject.toml's dependencies, so a changed dependency can't ship unpinned.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import bentoml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CUDA_BASE_IMAGE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
PYTHON_VERSION = "3.11"
FLAVOURS = ("cpu", "gpu")
LOCK_DIR = Path("deploy") / "requirements"  # relative to the directory holding pyproject.toml
_CPU_ONLY = {"faiss-cpu": "faiss-gpu", "onnxruntime": "onnxruntime-gpu"}  # replaced by the gpu extra
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


class LockError(RuntimeError):
    """A lock file is missing, malformed, or does not cover pyproject.toml's dependencies."""


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def lock_path(root: Path, flavour: str) -> Path:
    """``<root>/deploy/requirements/serving-<flavour>.txt``."""
    if flavour not in FLAVOURS:
        raise ValueError(f"FOLIO_IMAGE_FLAVOUR must be cpu or gpu, not {flavour!r}")
    return root / LOCK_DIR / f"serving-{flavour}.txt"


def read_lock(path: Path) -> dict[str, str]:
    """Canonical name -> pinned version; every non-comment line must be ``name==version``."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _PIN.match(line)
        if not m:
            raise LockError(f"{path}:{number}: not an exact pin (name==version): {raw!r}")
        name = canonicalize_name(m.group(1))
        if name in pins:
            raise LockError(f"{path}:{number}: {name} pinned twice")
        pins[name] = m.group(2)
    if not pins:
        raise LockError(f"{path}: no pins")
    return pins


def declared_dependencies(pyproject: Path, flavour: str) -> list[str]:
    """The requirement strings the flavour's image must satisfy (pyproject.toml, gpu extra swapped in)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    deps: list[str] = list(project["dependencies"])
    if flavour == "gpu":
        deps = [d for d in deps if _name(d) not in _CPU_ONLY] + list(project["optional-dependencies"]["gpu"])
    return deps


def lock_problems(pins: dict[str, str], declared: list[str]) -> list[str]:
    """Each declared dependency must be pinned, at a version its specifier accepts."""
    problems = []
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate():
            continue
        if name not in pins:
            problems.append(f"{text}: not pinned")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{text}: pinned at {pins[name]}, outside the declared range")
    return problems


def _inside_built_bento(root: Path) -> bool:
    # A built Bento keeps the sources in <bento>/src next to bento.yaml; its image is already frozen
    # (<bento>/env/python/requirements.txt), so serving from it never builds an image again.
    return (root.parent / "bento.yaml").is_file()


def bento_image(pyproject: Path, flavour: str | None = None) -> bentoml.images.Image:
    flavour = flavour or os.environ.get("FOLIO_IMAGE_FLAVOUR", "cpu")
    root = pyproject.resolve().parent
    lock = lock_path(root, flavour)
    declared = declared_dependencies(pyproject, flavour)
    if lock.is_file():
        pins = read_lock(lock)
        problems = lock_problems(pins, declared)
        if problems:
            raise LockError(
                f"{lock} does not match pyproject.toml ({'; '.join(problems)}); "
                "regenerate it: python scripts/audit.py lock"
            )
        packages = [f"{name}=={version}" for name, version in sorted(pins.items())]
    elif _inside_built_bento(root):
        packages = declared  # not used for an install: the built Bento's image is frozen already
    else:
        raise LockError(f"{lock} is missing; generate it: python scripts/audit.py lock")
    if flavour == "cpu":
        image = bentoml.images.Image(python_version=PYTHON_VERSION, lock_python_packages=False)
    else:
        image = bentoml.images.Image(
            base_image=CUDA_BASE_IMAGE, python_version=PYTHON_VERSION, lock_python_packages=False
        )
    return image.python_packages(*packages)
