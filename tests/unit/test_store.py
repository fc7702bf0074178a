"""Model-store versioning on a temporary BENTOML_HOME (set in tests/conftest.py)."""

import pytest

from training import store
from training.triton_repo import render_triton


@pytest.fixture(scope="module")
def three_versions(artifacts_dir):
    return [str(store.save(artifacts_dir, {"dataset": "synthetic"}, {"n": i}).tag) for i in range(3)]


def test_save_refuses_incomplete_artifacts(tmp_path):
    (tmp_path / "ranker_fp32.onnx").write_bytes(b"x")
    with pytest.raises(store.StoreError, match="lacks"):
        store.save(tmp_path, {}, {})


def test_saved_version_holds_every_artifact(three_versions):
    from pathlib import Path

    model = store.get(three_versions[0])
    assert all((Path(model.path) / a).is_file() for a in store.ARTIFACTS)
    assert model.info.labels["stage"] == "candidate" and model.info.metadata["n"] == 0


def test_promote_and_rollback_walk_the_history(three_versions):
    a, b, c = three_versions
    with pytest.raises(store.StoreError):
        store.get("folio:doesnotexist")
    store.promote(a)
    store.promote(b)
    store.promote(c)
    assert str(store.production().tag) == c
    assert store.get(b).info.labels["stage"] == "retired"
    assert str(store.rollback().tag) == b
    assert store.get(c).info.labels["stage"] == "rolled-back"
    assert str(store.rollback().tag) == a
    with pytest.raises(store.StoreError, match="nothing to roll back"):
        store.rollback()
    rows = {r["tag"]: r for r in store.listing()}
    assert rows[a]["stage"] == "production"


def test_render_triton_from_a_stored_version(three_versions, tmp_path):
    from pathlib import Path

    dirs = render_triton(Path(store.get(three_versions[0]).path), tmp_path)
    assert sorted(d.name for d in dirs) == ["ranker_fp16", "ranker_fp32", "ranker_int8"]
    assert all((d / "1" / "model.onnx").is_file() and (d / "config.pbtxt").is_file() for d in dirs)
