#!/usr/bin/env bash
# The main job on a fresh machine: fetch ML-100K, train, evaluate, export FP32/FP16/INT8 with parity
# checks, version the model in the BentoML store, promote it, render the Triton repository.
# Extra arguments go to `python -m training main` (e.g. --dataset ml-1m).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
python -m training main "$@"
python -m training list
