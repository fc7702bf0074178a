#!/usr/bin/env bash
# The main job on a fresh machine: fetch ML-100K, train, evaluate, export FP32/FP16/INT8 with parity
# checks, version the model in the BentoML store, promote it, render the Triton repository, then serve
# it (BentoML on :3000 with an embedded tritonserver and embedded state; Ctrl-C stops both).
# Extra arguments go to `python -m training main` (e.g. --dataset ml-1m). FOLIO_SKIP_TRAIN=1 serves
# the current production version without training; FOLIO_NO_SERVE=1 stops after training.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
if [ "${FOLIO_SKIP_TRAIN:-0}" != "1" ]; then
  python -m training main "$@"
fi
python -m training list
if [ "${FOLIO_NO_SERVE:-0}" != "1" ]; then
  echo "serving on http://127.0.0.1:${FOLIO_PORT:-3000} (Swagger at /docs), e.g.:"
  echo "  curl -s -X POST localhost:${FOLIO_PORT:-3000}/recommend -H 'content-type: application/json' -d '{\"user_id\": \"1\"}'"
  exec bentoml serve service:Recommender --host "${FOLIO_HOST:-127.0.0.1}" --port "${FOLIO_PORT:-3000}"
fi
