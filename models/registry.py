"""Versioning in the BentoML model store: save a version directory (models/version.py) as
``folio:<version>``, list, promote, roll back.

Labels: ``stage`` (candidate | production | retired | rolled-back), ``dataset`` and, once promoted,
``promoted_at`` (UTC ISO time). Production is the model labelled stage=production; rollback walks
back to the most recently promoted version before it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import bentoml
import yaml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore

from models import version

MODEL_NAME = "folio"
MODEL_STORE_ENV = "FOLIO_MODEL_STORE"


def use_configured_store() -> None:
    """FOLIO_MODEL_STORE (a directory): the model store every Folio process reads and writes instead of
    BentoML's (``$BENTOML_HOME/models``, or inside a containerized Bento its own read-only copy). It is
    how a retrain job and the serving replicas share versions: both mount one volume (deploy/README.md).
    Called by the training CLI and by the service once it is built (the version declared at class scope
    for `bentoml build` still comes from the Bento's own store)."""
    if path := os.environ.get(MODEL_STORE_ENV):
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        BentoMLContainer.model_store.set(ModelStore(directory))


class StoreError(RuntimeError):
    pass


def servable_problems(model: bentoml.Model) -> list[str]:
    """Why a stored version must not be served: missing or corrupted artifacts (their sha256 differs from
    the one saved), failed parity (empty: servable; a version saved without checksums is unverified)."""
    path = Path(model.path)
    problems = [f"missing {a}" for a in version.missing(path)]
    problems += version.checksum_problems(path, model.info.metadata.get(version.CHECKSUMS)) or []
    parity: Any = model.info.metadata.get("parity") or {}
    return list(dict.fromkeys(problems + version.parity_problems(parity)))


def save(artifacts: Path, labels: dict[str, str], metadata: dict[str, Any]) -> bentoml.Model:
    """Copy a complete artifact directory into a new store version (stage=candidate), recording every
    artifact's sha256 (as copied) in its metadata; a ``sha256`` in ``metadata`` is replaced."""
    if missing := version.missing(artifacts):
        raise StoreError(f"{artifacts} lacks {', '.join(missing)}: refusing to version an incomplete model")
    metadata = {k: v for k, v in metadata.items() if k != version.CHECKSUMS}
    with bentoml.models.create(
        MODEL_NAME, labels={"stage": "candidate", **labels}, metadata=metadata
    ) as model:
        for name in version.ARTIFACTS + version.OPTIONAL_ARTIFACTS:
            if (artifacts / name).is_file():
                shutil.copy2(artifacts / name, Path(model.path) / name)
        recorded: Any = version.checksums(Path(model.path))  # MetadataType admits a str -> str map
        model.info.metadata[version.CHECKSUMS] = recorded
    return model


def _models() -> list[bentoml.Model]:
    try:
        models = bentoml.models.list(MODEL_NAME)
    except bentoml.exceptions.NotFound:  # no version saved yet
        return []
    return sorted(models, key=lambda m: m.info.creation_time)


def get(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag if ":" in tag else f"{MODEL_NAME}:{tag}")
    except bentoml.exceptions.NotFound as exc:
        raise StoreError(f"no model {tag!r} in the store ({bentoml.__name__} home: {store_home()})") from exc
    except (bentoml.exceptions.BentoMLException, ValueError) as exc:  # not a valid tag
        raise StoreError(f"{tag!r} is not a valid model tag: {exc}") from exc


def store_home() -> str:
    return str(BentoMLContainer.model_store.get()._path)


def set_labels(model: bentoml.Model, **labels: str) -> None:
    model.info.labels.update(labels)
    model.flush()  # rewrites model.yaml


def newest() -> bentoml.Model | None:
    models = _models()
    return models[-1] if models else None


def production() -> bentoml.Model | None:
    """The newest version (by creation time, then tag) labelled stage=production; None if none is.
    Found by `production_tag` (one model.yaml parsed: the answer's), so as cheap to poll as that."""
    tag = production_tag()
    return None if tag is None else bentoml.models.get(tag)


# ------------------------------------------------------------------ the production poll's fast path
# bentoml.models.list parses every version's model.yaml with pure-Python PyYAML under the GIL: a
# watcher polling it stalls its event loop more with every saved version. `production_tag` stats the
# files instead and parses only those whose (mtime_ns, size) changed since it last saw them.

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
RACY_NS = 2_000_000_000
"""A model.yaml modified less than this before it was read is read again on the next call even if its
(mtime_ns, size) did not change: a rewrite within the filesystem's timestamp granularity (coarse clock
ticks, 1-2 s on some filesystems) keeps its mtime, and a label change can keep its size."""


class _Version(NamedTuple):
    order: tuple[datetime, str, str]  # (creation_time, name, version): production's tie-breaking
    stage: str | None
    promoted_at: str | None

    @property
    def tag(self) -> str:
        return f"{self.order[1]}:{self.order[2]}"


class _Read(NamedTuple):
    stamp: tuple[int, int]  # (st_mtime_ns, st_size) when read
    settled: bool  # modified RACY_NS or more before it was read, and not during the read
    version: _Version | None  # None: unreadable (partial, corrupt), skipped


_read_cache: dict[str, _Read] = {}  # model.yaml path -> what it held; only the last scan's files


def production_tag() -> str | None:
    """The tag ("folio:<version>") `production` would return, from the store's model.yaml files: a
    call parses only files changed since the previous call (none for an unchanged store: a stat per
    version), so polling it holds the GIL for microseconds. A version whose model.yaml is missing,
    partial or corrupt (a save or a label rewrite in progress) is skipped, where `_models` raises."""
    best: _Version | None = None
    for v in _scan():
        if v.stage == "production" and (best is None or v.order > best.order):
            best = v
    return None if best is None else best.tag


def _scan() -> list[_Version]:
    global _read_cache
    root = os.path.join(store_home(), MODEL_NAME)  # the store in use now (see use_configured_store)
    try:
        paths = [os.path.join(e.path, "model.yaml") for e in os.scandir(root) if e.is_dir()]
    except OSError:  # no version saved yet
        paths = []
    kept: dict[str, _Read] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:  # a save still copying, or a version deleted meanwhile
            continue
        read = _read_cache.get(path)
        if read is None or not read.settled or read.stamp != (st.st_mtime_ns, st.st_size):
            read = _read(path)
        if read is not None:
            kept[path] = read
    _read_cache = kept  # deleted versions (and another store's files) drop out
    return [r.version for r in kept.values() if r.version is not None]


def _read(path: str) -> _Read | None:
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            text = f.read()
            after = os.fstat(f.fileno())
    except OSError:
        return None
    stamp = (before.st_mtime_ns, before.st_size)
    settled = stamp == (after.st_mtime_ns, after.st_size) and time.time_ns() - stamp[0] >= RACY_NS
    return _Read(stamp, settled, _parse(text))


def _parse(text: bytes) -> _Version | None:
    """What production needs from a model.yaml (fields as BentoML's ModelInfo reads them), or None."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # _Loader: a safe loader
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict):
        return None
    name, ver, created, labels = (doc.get(k) for k in ("name", "version", "creation_time", "labels"))
    if isinstance(created, str):
        try:
            created = datetime.fromisoformat(created)  # as BentoML structures it
        except ValueError:
            return None
    if not (isinstance(name, str) and isinstance(ver, str) and isinstance(created, datetime)):
        return None  # truncated: creation_time is written last
    if created.tzinfo is None:  # BentoML writes UTC; order a naive one as UTC rather than fail
        created = created.replace(tzinfo=UTC)
    labels = labels if isinstance(labels, dict) else {}
    stage, promoted = labels.get("stage"), labels.get("promoted_at")
    return _Version(
        (created, name, ver),
        None if stage is None else str(stage),
        None if promoted is None else str(promoted),
    )


def promote(tag: str, *, keep_time: bool = False) -> bentoml.Model:
    """Label ``tag`` stage=production; the previous production version becomes stage=retired."""
    model = get(tag)
    for m in _models():
        if m.info.labels.get("stage") == "production" and m.tag != model.tag:
            set_labels(m, stage="retired")
    stamp = model.info.labels.get("promoted_at") if keep_time else None
    set_labels(model, stage="production", promoted_at=stamp or datetime.now(UTC).isoformat())
    return model


def rollback() -> bentoml.Model:
    """Back to the version promoted most recently before the current production one."""
    current = production()
    if current is None:
        raise StoreError("no production model to roll back from")
    now = current.info.labels["promoted_at"]
    earlier = [
        m
        for m in _models()
        if m.info.labels.get("stage") == "retired" and m.info.labels.get("promoted_at", "") < now
    ]
    if not earlier:
        raise StoreError(f"{current.tag} is the first production version: nothing to roll back to")
    target = max(earlier, key=lambda m: m.info.labels["promoted_at"])
    set_labels(current, stage="rolled-back")
    return promote(str(target.tag), keep_time=True)


def listing() -> list[dict[str, Any]]:
    rows = []
    for m in _models():
        test: Any = m.info.metadata.get("test", {})
        metrics = test.get("Folio (retrieve + rank)", {})
        rows.append(
            {
                "tag": str(m.tag),
                "stage": m.info.labels.get("stage", ""),
                "dataset": m.info.labels.get("dataset", ""),
                "created": m.info.creation_time.isoformat(timespec="seconds"),
                "ndcg@10": metrics.get("ndcg@10"),
                "promoted_at": m.info.labels.get("promoted_at", ""),
            }
        )
    return rows


def read_json(model: bentoml.Model, name: str) -> Any:
    return json.loads((Path(model.path) / name).read_text())
