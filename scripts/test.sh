#!/usr/bin/env bash
# Lint, type-check and run every test (unit + integration against the real tritonserver).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ruff check .
ruff format --check .
mypy
# --cov: the coverage table (files below 100 %) and its TOTAL, failing under [tool.coverage.report] fail_under
python -m pytest -W ignore::DeprecationWarning --cov --cov-report=term "$@"
