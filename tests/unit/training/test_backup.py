"""training/backup.py on the local state store: create, verify (the manifest catches every damage), and
restore into an empty state directory and model store, refused before anything is written when the
backup or the target is wrong (tests/integration/test_backup_restore.py: a served service, and Redis)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore

from models import registry
from runners.platform.settings import Settings
from runners.state.feedback_log import JournalLog
from runners.state.journal import JournalBusy
from runners.state.local import LocalState
from runners.state.protocol import Event
from training import backup
from training.backup import BackupError, create_backup, restore_backup, verify_backup
from training.feedback import export_feedback

T0 = 1_790_000_000.0


@pytest.fixture
def use_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """``use_store(path)`` makes ``path`` the model store in use (the session's is put back after)."""
    previous = BentoMLContainer.model_store.get()
    monkeypatch.setattr(registry, "_read_cache", {})

    def use(path: Path) -> None:
        BentoMLContainer.model_store.set(ModelStore(path))

    yield use
    BentoMLContainer.model_store.set(previous)


def version(n: int) -> str:
    with bentoml.models.create(registry.MODEL_NAME, labels={"stage": "candidate"}, metadata={"n": n}) as m:
        (Path(m.path) / "weights.bin").write_bytes(bytes([n]) * 1000)
    return str(m.tag)


def served_state(state_dir: Path) -> tuple[dict[str, list[str]], bool]:
    async def read() -> tuple[dict[str, list[str]], bool]:
        s = LocalState(state_dir / "journal.jsonl")
        try:
            hist = {u: [e.item_id for e in await s.history(u)] for u in ("ann", "bob")}
            return hist, await s.is_forgotten("cy")
        finally:
            await s.close()

    return asyncio.run(read())


@pytest.fixture
def source(tmp_path: Path, use_store) -> Settings:  # type: ignore[no-untyped-def]
    """A local state with feedback, a forget, an export, and a store of 4 versions (the 2nd production)."""
    use_store(tmp_path / "store-a")
    tags = [version(n) for n in range(4)]
    registry.promote(tags[1])
    settings = Settings(state_dir=tmp_path / "state-a")

    async def write() -> None:
        s = LocalState(settings.state_dir / "journal.jsonl")
        await s.append_events(
            [Event(u, f"b{i}", "click", None, T0 + i) for i, u in enumerate(["ann", "bob"] * 3)], [1.0] * 6
        )
        await s.append_events([Event("cy", "b9", "purchase", None, T0)], [1.0])
        await s.forget("cy")
        await s.close()

    asyncio.run(write())
    export_feedback(JournalLog(settings.state_dir / "journal.jsonl", None), settings.state_dir / "feedback")
    asyncio.run(write_more(settings.state_dir))  # acknowledged after the export: only in the journal
    return settings


async def write_more(state_dir: Path) -> None:
    s = LocalState(state_dir / "journal.jsonl")
    await s.append_events([Event("ann", "late", "view", None, T0 + 99)], [1.0])
    await s.close()


def test_backup_and_restore_round_trip(tmp_path: Path, source: Settings, use_store) -> None:  # type: ignore[no-untyped-def]
    before = served_state(source.state_dir)
    assert before == ({"ann": ["b0", "b2", "b4", "late"], "bob": ["b1", "b3", "b5"]}, True)
    production = registry.production_tag()
    made = create_backup(tmp_path / "bk", source, source.state_dir / "feedback", latest=1)
    newest = registry.listing()[-1]["tag"]
    assert made["production"] == production and made["models"] == [production, newest]
    assert made["state"]["kind"] == "local" and made["feedback_checkpoints"] == {"journal": [8, 0]}
    assert verify_backup(tmp_path / "bk")["models"]["production"] == production
    assert (tmp_path / "bk" / "state" / "user-hash.key").stat().st_mode & 0o777 == 0o600

    use_store(tmp_path / "store-b")  # a fresh machine: empty model store, empty state directory
    target = Settings(state_dir=tmp_path / "state-b")
    out = restore_backup(tmp_path / "bk", target, target.state_dir / "feedback")
    assert sorted(out["models_imported"]) == sorted([production, newest]) and out["feedback_files"] == 1
    assert registry.production_tag() == production
    assert registry.get(production).info.labels["promoted_at"]  # the labels came with it
    assert served_state(target.state_dir) == before
    for name in ("journal.jsonl", "user-hash.key", "feedback/feedback-journal-8-0.csv"):
        assert (target.state_dir / name).read_bytes() == (source.state_dir / name).read_bytes()
    # the restored export checkpoint still holds: the next export reads exactly the late event
    again = export_feedback(
        JournalLog(target.state_dir / "journal.jsonl", None), target.state_dir / "feedback"
    )
    assert again.events == 1 and again.position == (9, 0)


def corrupt(bk: Path, how: str) -> None:
    manifest = json.loads((bk / "manifest.json").read_text())
    if how == "flip":
        path = bk / "state" / "journal.jsonl"
        data = bytearray(path.read_bytes())
        data[10] ^= 1
        path.write_bytes(bytes(data))
    elif how == "missing":
        next((bk / "models").iterdir()).unlink()
    elif how == "extra":
        (bk / "feedback" / "feedback-journal-99-0.csv").write_text("x\n")
    elif how == "traversal":
        manifest["files"]["../../etc/passwd"] = {"bytes": 1, "sha256": "0"}
    elif how == "production":
        manifest["models"]["production"] = "folio:notbackedup"
    elif how == "format":
        manifest["format"] = 99
    elif how == "no-manifest":
        (bk / "manifest.json").unlink()
        return
    (bk / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("flip", "state/journal.jsonl: size or sha256 differs"),
        ("missing", "missing"),
        ("extra", "feedback-journal-99-0.csv: not in the manifest"),
        ("traversal", "not a file a backup holds"),
        ("production", "folio:notbackedup is not among"),
        ("format", "backup format 99"),
        ("no-manifest", "no manifest.json"),
    ],
)
def test_a_damaged_backup_is_refused_before_anything_is_written(
    tmp_path: Path, source: Settings, use_store, how: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    create_backup(tmp_path / "bk", source, source.state_dir / "feedback", latest=0)
    corrupt(tmp_path / "bk", how)
    with pytest.raises(BackupError, match=re.escape(message)):
        verify_backup(tmp_path / "bk")
    use_store(tmp_path / "store-b")
    target = Settings(state_dir=tmp_path / "state-b")
    with pytest.raises(BackupError, match=re.escape(message)):
        restore_backup(tmp_path / "bk", target, target.state_dir / "feedback")
    assert not target.state_dir.exists() and registry.listing() == []


def test_restore_refuses_a_used_target(tmp_path: Path, source: Settings, use_store) -> None:  # type: ignore[no-untyped-def]
    create_backup(tmp_path / "bk", source, source.state_dir / "feedback", latest=0)
    with pytest.raises(BackupError, match="exists and is not an empty directory"):
        create_backup(tmp_path / "bk", source, source.state_dir / "feedback")
    with pytest.raises(BackupError, match=r"journal\.jsonl exists"):
        restore_backup(tmp_path / "bk", source, tmp_path / "empty-feedback")  # over live state
    with pytest.raises(BackupError, match="already holds feedback export files"):
        restore_backup(tmp_path / "bk", Settings(state_dir=tmp_path / "c"), source.state_dir / "feedback")
    redis = Settings(state_dir=tmp_path / "c", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(BackupError, match="FOLIO_REDIS_URL is set"):
        restore_backup(tmp_path / "bk", redis, tmp_path / "c" / "feedback")
    # a service that has the (empty) target journal open: the restore waits for nobody, it refuses
    use_store(tmp_path / "store-b")
    asyncio.run(LocalState(tmp_path / "e" / "journal.jsonl").close())  # a service made its own key there
    with pytest.raises(BackupError, match=r"user-hash\.key exists"):
        restore_backup(tmp_path / "bk", Settings(state_dir=tmp_path / "e"), tmp_path / "e" / "feedback")
    running = LocalState(tmp_path / "d" / "journal.jsonl", hash_key=b"k" * 32)  # empty journal, no key file
    with pytest.raises(JournalBusy, match="in use"):
        restore_backup(tmp_path / "bk", Settings(state_dir=tmp_path / "d"), tmp_path / "d" / "feedback")
    asyncio.run(running.close())
    assert registry.listing() == [] and not (tmp_path / "c").exists()


def test_cli_journal_compact_refuses_redis_and_compacts_local(
    tmp_path: Path, source: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    short = source.model_copy(update={"max_history": 2})  # the service's settings, histories of 2
    monkeypatch.setattr(backup, "load_settings", lambda: short)
    backup.cmd_journal(None)  # type: ignore[arg-type]
    result = json.loads(capsys.readouterr().out)["journal_compact"]
    # exported events beyond the histories go (b0, b1, b2); cy's forget stays (cy is still forgotten)
    assert result["lines_before"] == 9 and result["lines_after"] == 6
    text = (source.state_dir / "journal.jsonl").read_text()
    assert all(f'"item_id": "{b}"' not in text for b in ("b0", "b1", "b2")) and '"item_id": "b3"' in text
    assert '"op": "forget"' in text
    monkeypatch.setattr(backup, "load_settings", lambda: Settings(redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(BackupError, match="no local journal"):
        backup.cmd_journal(None)  # type: ignore[arg-type]
