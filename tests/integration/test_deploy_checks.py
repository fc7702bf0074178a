"""`runners.serving.deployment.deploy` refuses a version the Triton it would use does not actually serve."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from models import registry
from runners.platform.settings import Settings
from runners.serving.deployment import deploy
from runners.stages.served_model import ModelLoadError
from runners.state.local import LocalState
from runners.triton.server import TritonServer

pytestmark = pytest.mark.integration


def doubled_scores(path: Path) -> None:
    """Rewrite an ONNX ranker so it scores everything twice as high (same I/O, other model)."""
    model = onnx.load(path)
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
    model.graph.initializer.append(helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]))
    model.graph.node.append(helper.make_node("Mul", [f"{out}_raw", "two"], [out]))
    onnx.save(model, path)


def try_deploy(tag: str, triton: TritonServer, tmp_path: Path) -> str:
    settings = Settings(triton_url=triton.grpc_url, state_dir=tmp_path)

    async def main() -> str:
        dep = await deploy(settings, LocalState(tmp_path / "j.jsonl"), tag, require_triton=True)
        await dep.ranking.close()
        return dep.tag

    return asyncio.run(main())


def test_external_triton_serving_this_version_is_accepted(
    model_tag: str, triton_server: TritonServer, tmp_path: Path
) -> None:
    assert try_deploy(model_tag, triton_server, tmp_path) == model_tag


def test_external_triton_serving_other_rankers_is_refused(
    model_tag: str, triton_server: TritonServer, tmp_path: Path
) -> None:
    stored = registry.get(model_tag)
    changed = tmp_path / "changed"
    shutil.copytree(stored.path, changed, ignore=shutil.ignore_patterns("model.yaml"))
    doubled_scores(changed / "ranker_fp32.onnx")
    other = str(registry.save(changed, {"dataset": "synthetic"}, dict(stored.info.metadata)).tag)
    with pytest.raises(ModelLoadError, match="serves other rankers"):
        try_deploy(other, triton_server, tmp_path)
