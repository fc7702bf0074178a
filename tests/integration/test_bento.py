"""`bentoml build` from a clean checkout, the generated Dockerfile, and the built Bento served.

`bentoml containerize` needs a Docker engine (none here); what it would build from is checked instead:
the Dockerfile and requirements BentoML generates inside the Bento.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from models import registry
from runners.platform.processes import ROOT, ServedFolio

pytestmark = pytest.mark.integration


def clean_checkout(dest: Path) -> Path:
    """The working tree as a fresh clone would have it: tracked and unignored files only."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clean_checkout(tmp_path_factory.mktemp("checkout"))


def build(src: Path, model_tag: str, flavour: str) -> tuple[str, Path]:
    bentoml = Path(sys.executable).with_name("bentoml")
    env = {**os.environ, "FOLIO_MODEL_TAG": model_tag, "FOLIO_IMAGE_FLAVOUR": flavour}
    out = subprocess.run(
        [str(bentoml), "build", "-o", "tag"], cwd=src, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    info = subprocess.run(
        [str(bentoml), "get", tag, "-o", "path"], env=env, capture_output=True, text=True, check=True
    )
    return tag, Path(info.stdout.strip())


@pytest.fixture(scope="module")
def bento(checkout: Path, model_tag: str) -> tuple[str, Path]:
    return build(checkout, model_tag, "cpu")


def test_bento_holds_code_config_and_the_served_model(bento: tuple[str, Path], model_tag: str) -> None:
    tag, path = bento
    assert tag.startswith("folio:")
    meta = yaml.safe_load((path / "bento.yaml").read_text())
    packed = [m["tag"] for s in meta["services"] for m in s["models"]] + [m["tag"] for m in meta["models"]]
    assert model_tag in packed, packed
    for name in (
        "service.py",
        "pyproject.toml",
        "runners/stages/ranking.py",
        "runners/triton/backend_model.py",
        "models/features.py",
    ):
        assert (path / "src" / name).is_file(), name
    assert not (path / "src" / "tests").exists() and not (path / "src" / "data").exists()


def test_generated_dockerfile(bento: tuple[str, Path]) -> None:
    _, path = bento
    dockerfile = (path / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "USER bentoml" in dockerfile and "useradd" in dockerfile  # runs as a non-root user
    assert "EXPOSE 3000" in dockerfile
    requirements = (path / "env" / "python" / "requirements.txt").read_text()
    assert "nvidia-pytriton" in requirements, "the image must carry the tritonserver binary"
    assert "torch" not in requirements, "serving must not pull PyTorch into the image"
    assert "FOLIO_STATE_DIR" in (path / "bento.yaml").read_text()


def test_built_bento_is_served(bento: tuple[str, Path], model_tag: str, tmp_path: Path) -> None:
    tag, _ = bento
    env = {"FOLIO_MODEL_TAG": model_tag, "FOLIO_STATE_DIR": str(tmp_path / "state")}
    with ServedFolio(env, tmp_path / "serve.log", target=tag) as served:
        r = httpx.post(f"{served.url}/recommend", json={"user_id": "u1", "k": 3}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == model_tag and body["fallback"] == "none" and len(body["items"]) == 3


SAVE = (
    "import json, sys; from pathlib import Path; from models import registry; "
    "registry.use_configured_store(); "
    "print(registry.save(Path(sys.argv[1]), {'dataset': 'synthetic'}, json.loads(sys.argv[2])).tag)"
)


def test_built_bento_follows_a_shared_model_store(
    bento: tuple[str, Path], model_tag: str, tmp_path: Path
) -> None:
    """FOLIO_MODEL_STORE: the Bento serves the production version of a store a retrain job writes (a
    shared volume in deploy/k8s), not its own packed copy, and follows a promotion made there."""

    stored = registry.get(model_tag)
    env = {**os.environ, "FOLIO_MODEL_STORE": str(tmp_path / "shared")}
    env.pop("FOLIO_MODEL_TAG", None)

    def training(*args: str) -> str:
        out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    first, second = (
        training(sys.executable, "-c", SAVE, str(stored.path), json.dumps(stored.info.metadata))
        for _ in range(2)
    )
    training(sys.executable, "-m", "training", "promote", first)
    serve_env = {"FOLIO_MODEL_STORE": env["FOLIO_MODEL_STORE"], "FOLIO_MODEL_WATCH_S": "0.5"}
    serve_env["FOLIO_STATE_DIR"] = str(tmp_path / "state")
    with ServedFolio(serve_env, tmp_path / "serve.log", target=bento[0]) as served:
        info = httpx.post(f"{served.url}/info", json={}, timeout=30).json()
        assert info["model_version"] == first != model_tag
        training(sys.executable, "-m", "training", "promote", second)
        deadline = time.monotonic() + 60
        while httpx.post(f"{served.url}/info", json={}, timeout=30).json()["model_version"] != second:
            assert time.monotonic() < deadline, served.log_tail()
            time.sleep(0.25)


def test_gpu_flavour_swaps_in_cuda_builds(checkout: Path, model_tag: str) -> None:
    _, path = build(checkout, model_tag, "gpu")
    assert "FROM nvidia/cuda:" in (path / "env" / "docker" / "Dockerfile").read_text()
    requirements = (path / "env" / "python" / "requirements.txt").read_text().split()
    names = {r.split(">")[0].split("=")[0].split("[")[0] for r in requirements}
    assert {"faiss-gpu-cu12", "onnxruntime-gpu", "nvidia-pytriton"} <= names
    assert not {"faiss-cpu", "onnxruntime", "torch"} & names
