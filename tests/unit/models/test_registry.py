"""Model-store versioning on a temporary BENTOML_HOME (set in tests/conftest.py)."""

import pytest

from models import registry, version
from runners.triton.repository import render_triton


@pytest.fixture(scope="module")
def three_versions(artifacts_dir):
    return [str(registry.save(artifacts_dir, {"dataset": "synthetic"}, {"n": i}).tag) for i in range(3)]


def test_save_refuses_incomplete_artifacts(tmp_path):
    (tmp_path / "ranker_fp32.onnx").write_bytes(b"x")
    with pytest.raises(registry.StoreError, match="lacks"):
        registry.save(tmp_path, {}, {})


def test_saved_version_holds_every_artifact(three_versions):
    from pathlib import Path

    model = registry.get(three_versions[0])
    assert all((Path(model.path) / a).is_file() for a in version.ARTIFACTS)
    assert model.info.labels["stage"] == "candidate" and model.info.metadata["n"] == 0


def test_promote_and_rollback_walk_the_history(three_versions):
    a, b, c = three_versions
    with pytest.raises(registry.StoreError):
        registry.get("folio:doesnotexist")
    registry.promote(a)
    registry.promote(b)
    registry.promote(c)
    assert str(registry.production().tag) == c
    assert registry.get(b).info.labels["stage"] == "retired"
    assert str(registry.rollback().tag) == b
    assert registry.get(c).info.labels["stage"] == "rolled-back"
    assert str(registry.rollback().tag) == a
    with pytest.raises(registry.StoreError, match="nothing to roll back"):
        registry.rollback()
    rows = {r["tag"]: r for r in registry.listing()}
    assert rows[a]["stage"] == "production"


def test_render_triton_from_a_stored_version(three_versions, tmp_path):
    from pathlib import Path

    dirs = render_triton(Path(registry.get(three_versions[0]).path), tmp_path)
    assert sorted(d.name for d in dirs) == ["ranker_fp16", "ranker_fp32", "ranker_int8"]
    assert all((d / "1" / "model.onnx").is_file() and (d / "config.pbtxt").is_file() for d in dirs)
