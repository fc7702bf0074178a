"""registry.production_tag (the watcher's poll) against the slow path it replaces, on a private store."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest
import yaml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore

from models import registry


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty model store in use for the test (the session's store is put back after)."""
    previous = BentoMLContainer.model_store.get()
    monkeypatch.setattr(registry, "_read_cache", {})
    BentoMLContainer.model_store.set(ModelStore(tmp_path / "store"))
    yield tmp_path / "store" / registry.MODEL_NAME
    BentoMLContainer.model_store.set(previous)


@pytest.fixture
def yaml_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every YAML document parsed (BentoML's yaml.safe_load goes through yaml.load too)."""
    calls = [0]
    real = yaml.load

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(yaml, "load", counting)
    return calls


def new_version(**labels: str) -> str:
    with bentoml.models.create(
        registry.MODEL_NAME,
        labels={"stage": "candidate", **labels},
        metadata={"test": {"m": {f"k{i}": i / 7 for i in range(50)}}},  # a realistically long file
    ) as model:
        pass
    return str(model.tag)


def yaml_of(tag: str) -> Path:
    return Path(registry.store_home(), *tag.split(":"), "model.yaml")


def age(store: Path) -> None:
    """Backdate every model.yaml, as in a store left alone for a minute (past registry.RACY_NS)."""
    old = time.time() - 60
    for f in store.glob("*/model.yaml"):
        os.utime(f, (old, old))


def slow() -> str | None:
    """production() as it was: every version listed as a bentoml.Model."""
    prod = [m for m in registry._models() if m.info.labels.get("stage") == "production"]
    return str(prod[-1].tag) if prod else None


def agree() -> str | None:
    fast = registry.production_tag()
    model = registry.production()
    assert fast == slow() == (None if model is None else str(model.tag))
    return fast


def test_agrees_with_the_slow_path_across_promote_rollback_relabel_and_delete(store):
    assert agree() is None  # no version saved yet
    a, b, c, d = (new_version() for _ in range(4))
    assert agree() is None  # candidates only
    for tag in (a, b, c):
        registry.promote(tag)
        assert agree() == tag
    assert str(registry.rollback().tag) == b
    assert agree() == b
    registry.set_labels(registry.get(b), dataset="relabelled")  # model.yaml rewritten, still production
    assert agree() == b
    registry.set_labels(registry.get(a), stage="production")  # two labelled production: the newest wins
    assert agree() == b
    bentoml.models.delete(b)
    assert agree() == a
    assert str(yaml_of(a)) in registry._read_cache
    bentoml.models.delete(a)
    assert agree() is None
    assert not any(a.split(":")[1] in p for p in registry._read_cache)  # a deleted version drops out
    registry.promote(d)
    assert agree() == d


def test_ties_break_as_the_slow_path_does(store):
    """Equal creation times: the greater tag wins; otherwise creation time, whatever the tag order."""
    tags = [new_version(stage="production") for _ in range(3)]
    same = re.search(r"creation_time: .*", yaml_of(tags[0]).read_text())
    assert same is not None
    for tag in tags[1:]:
        f = yaml_of(tag)
        f.write_text(re.sub(r"creation_time: .*", same.group(0), f.read_text()))
    assert agree() == max(tags)
    f = yaml_of(min(tags))
    f.write_text(re.sub(r"creation_time: .*", "creation_time: '2999-01-01T00:00:00+00:00'", f.read_text()))
    assert agree() == min(tags)


def test_a_partial_or_corrupt_version_is_skipped_not_fatal(store):
    good, prod, partial, garbage, empty, copying = (new_version() for _ in range(6))
    registry.promote(good)
    registry.promote(prod)
    expected = slow()
    text = yaml_of(partial).read_text()
    yaml_of(partial).write_text(text[: len(text) // 2])  # cut mid-write: no creation_time yet
    yaml_of(garbage).write_bytes(b"name: [folio\n\x00\xff")
    yaml_of(empty).write_text("")
    yaml_of(copying).unlink()  # a save still copying its files
    with pytest.raises(Exception):  # noqa: B017 - the slow path fails on any of them
        slow()
    assert registry.production_tag() == expected == prod
    prod_yaml = yaml_of(prod).read_text()
    yaml_of(prod).write_text(prod_yaml[:-20])  # production's own file caught mid-rewrite
    assert registry.production_tag() is None  # `good` is retired: no stale or older answer
    yaml_of(prod).write_text(prod_yaml)
    assert registry.production_tag() == prod


def test_an_unchanged_store_is_not_parsed_again(store, yaml_loads):
    tags = [new_version() for _ in range(20)]
    registry.promote(tags[7])
    age(store)
    yaml_loads[0] = 0
    assert registry.production_tag() == tags[7]
    assert yaml_loads[0] == 20  # first call: every file
    yaml_loads[0] = 0
    assert registry.production_tag() == tags[7]
    assert yaml_loads[0] == 0
    model = registry.production()
    assert model is not None and str(model.tag) == tags[7]
    assert yaml_loads[0] == 1  # the answer's own model.yaml, by bentoml.models.get
    yaml_loads[0] = 0
    registry.promote(tags[9])  # lists every version, then rewrites two files
    yaml_loads[0] = 0
    assert registry.production_tag() == tags[9]
    assert yaml_loads[0] == 2  # only the rewritten ones


def test_a_rewrite_keeping_mtime_and_size_is_seen_while_recent(store):
    """Within the filesystem's timestamp granularity a rewrite may keep (mtime_ns, size): a file read
    soon after it was written is read again until it has settled."""
    tag = new_version(stage="production")
    f = yaml_of(tag)
    st = f.stat()
    assert registry.production_tag() == tag
    f.write_text(f.read_text().replace("stage: production", "stage: xroduction"))  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size
    assert registry.production_tag() is None


def test_follows_the_configured_store(store, tmp_path, monkeypatch):
    first = new_version(stage="production")
    assert registry.production_tag() == first
    monkeypatch.setenv(registry.MODEL_STORE_ENV, str(tmp_path / "shared"))
    registry.use_configured_store()  # replaced again by the fixture's teardown
    assert registry.production_tag() is None
    second = new_version(stage="production")
    assert registry.production_tag() == second != first
    assert all(p.startswith(str(tmp_path / "shared")) for p in registry._read_cache)
