#!/usr/bin/env bash
# Creates .venv (once) and installs Folio with its dev tools; re-installs when pyproject.toml changes.
# Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.folio-installed
want=$(cat pyproject.toml deploy/requirements/serving-cpu.txt | sha256sum | cut -d" " -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: the CPU build (an unpinned torch pulls several GB of CUDA packages).
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # constrained to the serving image's lock, so tests run the versions that ship (deploy/requirements/)
  .venv/bin/python -m pip install -q -c deploy/requirements/serving-cpu.txt -e ".[train,dev]"
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source .venv/bin/activate
