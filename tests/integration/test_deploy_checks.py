"""`runners.serving.deployment.deploy` refuses a version the Triton it would use does not actually serve,
a ranker that scores but no longer ranks like FP32, and an artifact changed since it was saved."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from loadtests.faults.store import randomize_largest_initializer
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


def saved_copy(model_tag: str, tmp_path: Path, change: Callable[[Path], None]) -> str:
    """A new version: ``model_tag``'s artifacts with ``change`` applied to the copy before saving."""
    stored = registry.get(model_tag)
    changed = tmp_path / "changed"
    shutil.copytree(stored.path, changed, ignore=shutil.ignore_patterns("model.yaml"))
    change(changed)
    return str(registry.save(changed, {"dataset": "synthetic"}, dict(stored.info.metadata)).tag)


def try_deploy(tag: str, triton: TritonServer | None, tmp_path: Path) -> str:
    """Deploy ``tag`` against an external ``triton`` (None: an embedded one)."""
    settings = Settings(triton_url=triton.grpc_url if triton else None, state_dir=tmp_path)

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
    other = saved_copy(model_tag, tmp_path, lambda d: doubled_scores(d / "ranker_fp32.onnx"))
    with pytest.raises(ModelLoadError, match="serves other rankers"):
        try_deploy(other, triton_server, tmp_path)


def test_a_valid_onnx_ranker_with_corrupted_weights_is_refused(model_tag: str, tmp_path: Path) -> None:
    """Saved with its (corrupt) checksum, so only the parity probe can tell: scored by an embedded Triton."""
    other = saved_copy(model_tag, tmp_path, lambda d: randomize_largest_initializer(d / "ranker_int8.onnx"))
    with pytest.raises(ModelLoadError, match="the int8 ranker disagrees with fp32: top-10 agreement"):
        try_deploy(other, None, tmp_path)


def test_an_artifact_changed_after_save_is_refused_before_loading(model_tag: str, tmp_path: Path) -> None:
    other = saved_copy(model_tag, tmp_path, lambda d: None)
    randomize_largest_initializer(Path(registry.get(other).path) / "ranker_fp16.onnx")  # rot inside the store
    with pytest.raises(ModelLoadError, match=r"ranker_fp16.onnx is corrupted \(sha256"):
        try_deploy(other, None, tmp_path)
