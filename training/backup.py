"""Backups of what Folio cannot rebuild, and their restore (docs/operations.md, "Backups and restore")::

    python -m training backup create --out DIR [--latest N | --all-models] [--feedback-dir D]
    python -m training backup verify DIR
    python -m training backup restore DIR [--feedback-dir D] [--redis-dir D]
    python -m training journal compact

A backup is a directory; ``manifest.json`` (written last: a directory without it is an unfinished backup)
lists every file with its size and sha256::

    state/journal.jsonl     local state (no FOLIO_REDIS_URL): acknowledged feedback and forgets,
    state/catalog.jsonl     the runtime catalog changes,
    state/user-hash.key     and the HMAC key the forget tombstones are keyed with (keep backups private)
    redis/dump.rdb          Redis state: one RDB snapshot of the whole instance (``redis-cli --rdb``, over
                            the replication protocol): feedback stream, histories, forgotten set, catalog,
                            trending sums, the hash key
    feedback/*.csv          the feedback export files (training/feedback.py): the journal's compaction drops
                            exported lines, so for those events these files are the only copy
    models/*.bentomodel     folio versions (``bentoml models export``): production, plus the ``--latest``
                            newest others (or all); their labels (stage, promoted_at) travel inside

The copies are consistent: no feedback export runs meanwhile (its lock is held), a journal is read in one
pass up to its last complete line, the RDB is a point-in-time snapshot. A running service may keep
writing: what it acknowledges after the copy is not in this backup.

``restore`` verifies the whole backup (every checksum, every name) and checks the targets (an empty state
directory no service has open, an empty feedback directory, an empty Redis data directory) before it writes
anything; then it imports the model versions (those already in the store are kept), writes the files
(each written to a temp file, fsynced, renamed), makes the backup's production version production again,
and for Redis turns the RDB into a data directory with its append-only file, ready for ``redis-server
--appendonly yes`` (Redis 7 ignores an RDB when AOF is on).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import bentoml

from models import registry
from models.version import sha256
from runners.platform.settings import Settings, load_settings
from runners.state.feedback_log import EXPORT_FILE
from runners.state.journal import lock_journal, replace_synced
from runners.state.local import compact_offline
from runners.state.redis_state import redact_url
from training.feedback import export_lock, exported_files

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
STATE_FILES = ("journal.jsonl", "catalog.jsonl", "user-hash.key")
RDB = "redis/dump.rdb"


class BackupError(RuntimeError):
    pass


def _complete_lines(path: Path) -> bytes:
    """A journal's bytes up to its last newline, read in one pass of one open file (a compaction that
    renames a new journal in meanwhile does not change what this reads)."""
    with open(path, "rb") as f:
        data = f.read()
    return data[: data.rfind(b"\n") + 1]


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """``path`` holds ``data`` once this returns, or still what it held before (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_synced(path, [data], path.with_name(f".{path.name}.restore.tmp"), mode)


# ------------------------------------------------------------------------------------------ create
def _redis_rdb(url: str, out: Path, timeout_s: float) -> None:
    """An RDB snapshot of the Redis at ``url`` into ``out`` (redis-cli --rdb: works remotely)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise BackupError("redis-cli is not on PATH: install redis-tools to back up Redis")
    p = urlsplit(url)
    env = dict(os.environ)
    if p.scheme == "unix":
        args = ["-s", p.path]
    else:
        args = ["-h", p.hostname or "127.0.0.1", "-p", str(p.port or 6379)] + (
            ["--tls"] if p.scheme == "rediss" else []
        )
        if p.username:
            args += ["--user", unquote(p.username)]
    if p.password:
        env["REDISCLI_AUTH"] = unquote(p.password)  # never on the command line
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [cli, *args, "--rdb", str(out)], env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0 or not out.is_file() or not out.read_bytes()[:5] == b"REDIS":
        raise BackupError(
            f"redis-cli --rdb from {redact_url(url)} failed: {(done.stderr or done.stdout)[-500:]}"
        )


def _selected_models(latest: int, all_models: bool) -> list[bentoml.Model]:
    rows = registry.listing()  # oldest first
    production = registry.production_tag()
    tags = [r["tag"] for r in rows if all_models or r["tag"] == production]
    if not all_models:
        tags += [r["tag"] for r in reversed(rows) if r["tag"] != production][:latest]
    return [registry.get(t) for t in tags]


def create_backup(
    out: Path, settings: Settings, feedback_dir: Path, *, latest: int = 2, all_models: bool = False
) -> dict[str, Any]:
    """Back up the state store ``settings`` name, the export files and model versions into ``out``."""
    if latest < 0:
        raise BackupError(f"--latest must be >= 0, got {latest}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} exists and is not an empty directory: back up into a new one")
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat()}
    with export_lock(feedback_dir):  # no export moves a checkpoint while the copies are taken
        for _, _, path in exported_files(feedback_dir):
            (out / "feedback").mkdir(exist_ok=True)
            shutil.copy2(path, out / "feedback" / path.name)
        if settings.redis_url:
            _redis_rdb(settings.redis_url, out / RDB, timeout_s=600)
            manifest["state"] = {"kind": "redis", "where": redact_url(settings.redis_url)}
        else:
            journal = settings.state_dir / "journal.jsonl"
            if not journal.is_file():
                raise BackupError(f"no journal at {journal}: is FOLIO_STATE_DIR the service's?")
            (out / "state").mkdir()
            for name in STATE_FILES:
                if (path := settings.state_dir / name).is_file():
                    data = path.read_bytes() if name.endswith(".key") else _complete_lines(path)
                    _write_new(out / "state" / name, data, 0o600 if name.endswith(".key") else 0o644)
            lines = (out / "state" / "journal.jsonl").read_bytes().count(b"\n")
            manifest["state"] = {"kind": "local", "where": str(settings.state_dir), "journal_lines": lines}
    models = _selected_models(latest, all_models)
    if models:
        (out / "models").mkdir()
    versions = []
    for m in models:
        name = f"{m.tag.name}-{m.tag.version}.bentomodel"
        bentoml.models.export_model(m.tag, str(out / "models" / name))
        versions.append({"tag": str(m.tag), "file": f"models/{name}", "labels": dict(m.info.labels)})
    manifest["models"] = {"production": registry.production_tag(), "versions": versions}
    manifest["feedback"] = {k: list(p) for k, p, _ in exported_files(out / "feedback")}
    manifest["files"] = {
        str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    _write_new(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    return _summary(manifest)


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": manifest["state"],
        "production": manifest["models"]["production"],
        "models": [v["tag"] for v in manifest["models"]["versions"]],
        "feedback_checkpoints": manifest["feedback"],
        "files": len(manifest["files"]),
        "bytes": sum(f["bytes"] for f in manifest["files"].values()),
    }


# ------------------------------------------------------------------------------------------ verify
def _allowed(rel: str) -> bool:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or len(p.parts) != 2:
        return False
    folder, name = p.parts
    return (
        (folder == "state" and name in STATE_FILES)
        or rel == RDB
        or (folder == "feedback" and EXPORT_FILE.match(name) is not None)
        or (folder == "models" and name.endswith(".bentomodel"))
    )


def _present(src: Path) -> Iterator[str]:
    for p in src.rglob("*"):
        if p.is_file() and p.name != MANIFEST:
            yield str(p.relative_to(src))


def verify_backup(src: Path) -> dict[str, Any]:
    """The manifest of the backup ``src`` once every file checks out; BackupError listing every problem."""
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(
            f"{src} has no {MANIFEST}: not a backup, or one whose create did not finish"
        ) from None
    except ValueError as exc:
        raise BackupError(f"{src / MANIFEST} is not valid JSON: {exc}") from None
    problems: list[str] = []
    try:
        if manifest.get("format") != FORMAT:
            raise BackupError(f"{src}: backup format {manifest.get('format')!r}, this Folio reads {FORMAT}")
        files: dict[str, dict[str, Any]] = manifest["files"]
        kind = manifest["state"]["kind"]
        versions = manifest["models"]["versions"]
        production = manifest["models"]["production"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"{src / MANIFEST} lacks {exc}: not a Folio backup manifest") from None
    for rel, meta in files.items():
        path = src / rel
        if not _allowed(rel):
            problems.append(f"{rel}: not a file a backup holds")
        elif not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != meta.get("bytes") or sha256(path) != meta.get("sha256"):
            problems.append(f"{rel}: size or sha256 differs from the manifest (damaged or changed)")
    problems += [f"{rel}: not in the manifest" for rel in _present(src) if rel not in files]
    need = {"local": "state/journal.jsonl", "redis": RDB}.get(kind)
    if need is None:
        problems.append(f"state kind {kind!r} is neither local nor redis")
    elif need not in files:
        problems.append(f"a {kind} backup without {need}")
    if kind == "redis" and (src / RDB).is_file() and (src / RDB).read_bytes()[:5] != b"REDIS":
        problems.append(f"{RDB} is not an RDB file")
    key = src / "state" / "user-hash.key"
    if key.is_file() and len(key.read_text().strip()) < 32:
        problems.append("state/user-hash.key holds no usable key")
    tags = {v.get("tag") for v in versions}
    problems += [
        f"{v.get('file')}: listed for {v.get('tag')} but not in the files"
        for v in versions
        if v.get("file") not in files
    ]
    if production is not None and production not in tags:
        problems.append(f"production version {production} is not among the backed-up versions")
    if problems:
        raise BackupError(f"backup {src} failed verification: " + "; ".join(problems))
    return dict(manifest)


# ------------------------------------------------------------------------------------------ restore
def _rdb_to_data_dir(redis_dir: Path) -> dict[str, Any]:
    """Load ``redis_dir/dump.rdb`` into a temporary redis-server and have it write its append-only file,
    so that a Redis started on ``redis_dir`` with ``--appendonly yes`` (as deployed) has the data."""
    from runners.platform.redis_server import RedisServer

    server = RedisServer(redis_dir).start()  # --appendonly no: loads dump.rdb
    try:
        with server.client() as c:
            keys = int(c.dbsize())
            c.config_set("appendonly", "yes")  # rewrites the AOF from the loaded data
            deadline = time.monotonic() + 300
            while True:
                info = c.info("persistence")
                if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                    if info.get("aof_last_bgrewrite_status") != "ok":
                        raise BackupError(f"Redis could not write its AOF in {redis_dir}: {info}")
                    break
                if time.monotonic() > deadline:
                    raise BackupError(f"Redis did not finish writing its AOF in {redis_dir} within 300 s")
                time.sleep(0.05)
    finally:
        server.stop()
        server.log_path.unlink(missing_ok=True)
    return {"redis_dir": str(redis_dir), "keys": keys}


def _check_targets(
    manifest: dict[str, Any], settings: Settings, feedback_dir: Path, redis_dir: Path | None
) -> None:
    problems = []
    if exported_files(feedback_dir):
        problems.append(f"{feedback_dir} already holds feedback export files")
    if manifest["state"]["kind"] == "local":
        if settings.redis_url:
            problems.append("the backup holds a local journal but FOLIO_REDIS_URL is set: unset it")
        for name in STATE_FILES:
            path = settings.state_dir / name
            if path.is_file() and path.stat().st_size:
                problems.append(f"{path} exists: restore into an empty FOLIO_STATE_DIR")
    else:
        if redis_dir is None:
            problems.append("a Redis backup needs --redis-dir: the data directory of a stopped Redis")
        elif redis_dir.exists() and any(
            (redis_dir / n).exists() for n in ("dump.rdb", "appendonlydir", "appendonly.aof")
        ):
            problems.append(f"{redis_dir} already holds Redis data: restore into an empty directory")
        if shutil.which("redis-server") is None:
            problems.append("redis-server is not on PATH: it turns the RDB into the data directory")
    if problems:
        raise BackupError("cannot restore: " + "; ".join(problems))


def restore_backup(
    src: Path, settings: Settings, feedback_dir: Path, redis_dir: Path | None = None
) -> dict[str, Any]:
    """Restore the backup ``src`` (module doc): verified and targets checked before anything is written."""
    manifest = verify_backup(src)
    _check_targets(manifest, settings, feedback_dir, redis_dir)
    local = manifest["state"]["kind"] == "local"
    journal = settings.state_dir / "journal.jsonl"
    held = lock_journal(journal, exclusive=True) if local else None  # no service starts meanwhile
    try:
        if local:
            _check_targets(manifest, settings, feedback_dir, redis_dir)  # nothing appeared before the lock
        imported, present = [], []
        for v in manifest["models"]["versions"]:
            try:
                registry.get(v["tag"])
                present.append(v["tag"])
            except registry.StoreError:
                bentoml.models.import_model(str(src / v["file"]))
                imported.append(v["tag"])
        out: dict[str, Any] = {"models_imported": imported, "models_already_present": present}
        for rel in sorted(manifest["files"]):
            folder, name = rel.split("/")
            if folder == "state":
                _write_new(
                    settings.state_dir / name,
                    (src / rel).read_bytes(),
                    0o600 if name.endswith(".key") else 0o644,
                )
            elif folder == "feedback":
                _write_new(feedback_dir / name, (src / rel).read_bytes())
        if not local:
            assert redis_dir is not None
            _write_new(redis_dir / "dump.rdb", (src / RDB).read_bytes())
            out["redis"] = _rdb_to_data_dir(redis_dir)
        if (production := manifest["models"]["production"]) is not None:
            registry.promote(production, keep_time=True)
        out["production"] = production
    finally:
        if held is not None:
            held.close()
    out["state"] = manifest["state"]["kind"]
    out["feedback_files"] = len(exported_files(feedback_dir))
    return out


# ------------------------------------------------------------------------------------------ CLI
def _feedback_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.feedback_dir) if args.feedback_dir else settings.state_dir / "feedback"


def cmd_backup(args: argparse.Namespace) -> None:
    settings = load_settings()
    if args.action == "create":
        result = create_backup(
            args.dir, settings, _feedback_dir(args, settings), latest=args.latest, all_models=args.all_models
        )
    elif args.action == "verify":
        result = _summary(verify_backup(args.dir))
    else:
        redis_dir = Path(args.redis_dir) if args.redis_dir else None
        result = restore_backup(args.dir, settings, _feedback_dir(args, settings), redis_dir)
    print(json.dumps({f"backup_{args.action}": result}))


def cmd_journal(args: argparse.Namespace) -> None:
    settings = load_settings()
    if settings.redis_url:
        raise BackupError(
            "FOLIO_REDIS_URL is set: the state is in Redis, there is no local journal to compact"
        )
    key = settings.user_hash_key
    result = compact_offline(
        settings.state_dir / "journal.jsonl",
        hash_key=key.get_secret_value().encode() if key else None,
        max_history=settings.max_history,
        half_life_s=settings.trending_half_life_s,
        keep_unexported=settings.journal_keep_unexported,
    )
    print(json.dumps({"journal_compact": result}))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("backup", help="back up / verify / restore feedback state, export files and models")
    p.add_argument("action", choices=("create", "verify", "restore"))
    p.add_argument("dir", type=Path, help="the backup directory (create: new or empty)")
    p.add_argument("--feedback-dir", type=Path, help="export files (default: <FOLIO_STATE_DIR>/feedback)")
    p.add_argument("--latest", type=int, default=2, help="create: newest versions kept besides production")
    p.add_argument("--all-models", action="store_true", help="create: every stored version")
    p.add_argument("--redis-dir", type=Path, help="restore: the (empty) data directory of a stopped Redis")
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser("journal", help="compact the local feedback journal (no service running on it)")
    p.add_argument("action", choices=("compact",))
    p.set_defaults(func=cmd_journal)
