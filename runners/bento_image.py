"""The Bento's runtime image, built from pyproject.toml (dependencies are declared once, there).

``FOLIO_IMAGE_FLAVOUR`` at `bentoml build` time picks the flavour:

* ``cpu`` (default): ``python:3.11-slim`` with ``[project] dependencies`` (faiss-cpu, onnxruntime, and
  nvidia-pytriton, which carries the tritonserver binary the embedded ranking stage starts).
* ``gpu``: a CUDA runtime base image, with the ``gpu`` extra's packages (faiss-gpu, onnxruntime-gpu)
  in place of their CPU builds. Pair it with an NGC Triton serving the ``--target gpu`` repository
  (deploy/README.md).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import bentoml

CUDA_BASE_IMAGE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
_CPU_ONLY = {"faiss-cpu": "faiss-gpu", "onnxruntime": "onnxruntime-gpu"}  # replaced by the gpu extra


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def bento_image(pyproject: Path, flavour: str | None = None) -> bentoml.images.Image:
    project = tomllib.loads(pyproject.read_text())["project"]
    deps: list[str] = list(project["dependencies"])
    flavour = flavour or os.environ.get("FOLIO_IMAGE_FLAVOUR", "cpu")
    if flavour == "cpu":
        return bentoml.images.Image(python_version="3.11", lock_python_packages=False).python_packages(*deps)
    if flavour != "gpu":
        raise ValueError(f"FOLIO_IMAGE_FLAVOUR must be cpu or gpu, not {flavour!r}")
    deps = [d for d in deps if _name(d) not in _CPU_ONLY] + list(project["optional-dependencies"]["gpu"])
    image = bentoml.images.Image(
        base_image=CUDA_BASE_IMAGE, python_version="3.11", lock_python_packages=False
    )
    return image.python_packages(*deps)
