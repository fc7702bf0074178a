"""Render the Triton model repository for the ranker precisions from a stored model directory.

Input (`model_dir`, written by the ONNX export): `ranker_fp32.onnx`, `ranker_fp16.onnx`,
`ranker_int8.onnx` and `ranker.json` ({"user_feature_dim": D, "n_items": N, "candidate_feature_dim": F,
...}). Every precision has the same float32 I/O (models/ranker.py): item_ids int64 [R], user_features
float32 [B, D], candidate_ends int32 [B] (cumulative candidate counts), candidate_features float32
[R*F] (flat, F per candidate in item_ids order) -> scores float32 [R].

Output (`out`, usually `model_repository/`)::

    out/README.md
    out/ranker_int8/config.pbtxt      rendered, deterministic, commit-able
    out/ranker_int8/1/model.onnx      copy of the stored ONNX (version dirs are git-ignored)
    out/ranker_int8/1/model.py        target "cpu" only: runners/triton/backend_model.py
    out/ranker_fp16/...
    out/ranker_fp32/...

Targets:

* "cpu": Python backend + ONNX Runtime CPU (`runners/triton/backend_model.py`), runnable with the
  tritonserver from the nvidia-pytriton wheel. The backend gets the raw requests, so `item_ids` and
  `candidate_features` are ragged inputs (`allow_ragged_batch`); model.py checks each request
  (`candidate_feature_dim`, rendered into the parameters, gives F), concatenates them and computes
  candidate_ends itself.
* "gpu": the NGC Triton image's ONNX Runtime backend (`platform: "onnxruntime_onnx"`). Triton itself
  concatenates the ragged `item_ids` and `candidate_features` (the ORT backend needs ragged inputs
  1-D, hence the flat [R*F]), feeds `candidate_ends` as a batch input
  (BATCH_ACCUMULATED_ELEMENT_COUNT over item_ids, TYPE_INT32 is allowed), and scatters the flat
  `scores` back per request with a batch output (BATCH_SCATTER_WITH_INPUT_SHAPE). TensorRT runs the
  graph at the precision; see README.md written next to the configs for the caveats.

Clients send one request per user: item_ids [1, n] int64, user_features [1, D] float32 and
candidate_features [1, n*F] float32, and get scores [1, n] float32, identical for both targets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from models.version import PRECISIONS, Precision, RankerFiles, RankerMeta

TARGETS = ("cpu", "gpu")
MODEL_PY = Path(__file__).resolve().parent / "backend_model.py"
VERSION = "1"
_TRT_PRECISION = {"int8": "INT8", "fp16": "FP16", "fp32": "FP32"}


def model_name(precision: Precision) -> str:
    """The Triton model serving the ranker at ``precision`` (one per precision in the repository)."""
    return f"ranker_{precision}"


def _block(lines: list[str], indent: str = "  ") -> str:
    return "\n".join(indent + line if line else line for line in lines)


def _io_section(meta: RankerMeta) -> str:
    return f"""input [
  {{
    name: "item_ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
    allow_ragged_batch: true
  }},
  {{
    name: "user_features"
    data_type: TYPE_FP32
    dims: [ {meta.user_feature_dim} ]
  }},
  {{
    name: "candidate_features"
    data_type: TYPE_FP32
    dims: [ -1 ]
    allow_ragged_batch: true
  }}
]"""


_OUTPUT = """output [
  {
    name: "scores"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
]"""


def _dynamic_batching(max_queue_delay_us: int, preferred_batch_sizes: tuple[int, ...]) -> str:
    lines = []
    if preferred_batch_sizes:
        lines.append(f"preferred_batch_size: [ {', '.join(str(s) for s in preferred_batch_sizes)} ]")
    lines.append(f"max_queue_delay_microseconds: {max_queue_delay_us}")
    return "dynamic_batching {\n" + _block(lines) + "\n}"


def _instance_group(kind: str, count: int) -> str:
    return f"""instance_group [
  {{
    count: {count}
    kind: {kind}
  }}
]"""


def _parameters(params: dict[str, str]) -> str:
    items = [
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'
        for key, value in params.items()
    ]
    return "\n".join(items)


# Candidates per ONNX Runtime run inside model.py: the CPU cost per candidate grows with the run size
# (see loadtests/triton_bench.py, levers one_run_per_batch / one_run_per_request).
MAX_CANDIDATES_PER_RUN = 1024


def render_config(
    precision: Precision,
    meta: RankerMeta,
    *,
    target: str = "cpu",
    max_batch_size: int = 64,
    max_queue_delay_us: int = 100,
    instances: int = 1,
    preferred_batch_sizes: tuple[int, ...] = (),
    intra_op_threads: int = 1,
    max_candidates_per_run: int = MAX_CANDIDATES_PER_RUN,
    max_candidates: int = 1000,
    trt_cache_dir: str = "/tmp/folio_trt_cache",
    dynamic_batching: bool = True,
) -> str:
    """The `config.pbtxt` text of one precision (fields in the Triton tutorials' order).

    `dynamic_batching=False` leaves the `dynamic_batching` block out: Triton's default scheduler then
    hands every request to its own execution (batch of one request), which is what a benchmark of
    batching on vs off compares against. `max_batch_size` stays as is, so the request contract is the same.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if max_batch_size < 1 or instances < 1 or max_queue_delay_us < 0 or max_candidates < 1:
        raise ValueError("max_batch_size, instances and max_candidates must be >= 1, max_queue_delay_us >= 0")
    name = model_name(precision)
    header = f'name: "{name}"\n'
    sections: list[str]
    if target == "cpu":
        header += 'backend: "python"\n'
        header += f"max_batch_size: {max_batch_size}"
        sections = [
            header,
            _io_section(meta),
            _OUTPUT,
            *([_dynamic_batching(max_queue_delay_us, preferred_batch_sizes)] if dynamic_batching else []),
            _instance_group("KIND_CPU", instances),
            _parameters(
                {
                    "candidate_feature_dim": str(meta.candidate_feature_dim),
                    "intra_op_num_threads": str(intra_op_threads),
                    "max_candidates_per_run": str(max_candidates_per_run),
                    "n_items": str(meta.n_items),
                    "onnx_file": "model.onnx",
                    "precision": precision,
                }
            ),
        ]
    else:
        header += 'platform: "onnxruntime_onnx"\n'
        header += f"max_batch_size: {max_batch_size}"
        d, f, b = meta.user_feature_dim, meta.candidate_feature_dim, max_batch_size

        def profile(requests: int, candidates: int) -> str:
            return (
                f"item_ids:{candidates},user_features:{requests}x{d},candidate_ends:{requests},"
                f"candidate_features:{candidates * f}"
            )

        opt_b = max(1, b // 2)
        trt = [
            ("precision_mode", _TRT_PRECISION[precision]),
            ("max_workspace_size_bytes", str(1 << 30)),
            ("trt_engine_cache_enable", "1"),
            ("trt_engine_cache_path", f"{trt_cache_dir}/{name}"),
            # One optimization profile over the whole dynamic range, so ragged batches of any size
            # reuse one engine instead of rebuilding when R grows past what was seen.
            ("trt_profile_min_shapes", profile(1, 1)),
            ("trt_profile_opt_shapes", profile(opt_b, opt_b * max_candidates)),
            ("trt_profile_max_shapes", profile(b, b * max_candidates)),
        ]
        trt_params = "\n".join(f'parameters {{ key: "{k}" value: "{v}" }}' for k, v in trt)
        sections = [
            header,
            _io_section(meta),
            """batch_input [
  {
    kind: BATCH_ACCUMULATED_ELEMENT_COUNT
    target_name: "candidate_ends"
    data_type: TYPE_INT32
    source_input: "item_ids"
  }
]""",
            _OUTPUT,
            """batch_output [
  {
    target_name: "scores"
    kind: BATCH_SCATTER_WITH_INPUT_SHAPE
    source_input: "item_ids"
  }
]""",
            *([_dynamic_batching(max_queue_delay_us, preferred_batch_sizes)] if dynamic_batching else []),
            _instance_group("KIND_GPU", instances),
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator [\n      {\n"
            + '        name: "tensorrt"\n'
            + _block(trt_params.splitlines(), " " * 8)
            + "\n      }\n    ]\n  }\n}",
        ]
    return "\n".join(sections) + "\n"


def render_triton(
    model_dir: Path,
    out: Path,
    *,
    target: str = "cpu",
    max_batch_size: int = 64,
    max_queue_delay_us: int = 100,
    instances: int = 1,
    preferred_batch_sizes: tuple[int, ...] = (),
    intra_op_threads: int = 1,
    max_candidates_per_run: int = MAX_CANDIDATES_PER_RUN,
    max_candidates: int = 1000,
    dynamic_batching: bool = True,
) -> list[Path]:
    """Write `out/ranker_{int8,fp16,fp32}/` for `target` ("cpu" or "gpu"); return the model dirs.

    Deterministic (same inputs -> byte-identical files). Numbered version dirs inside the ranker
    model dirs belong to the renderer: stale ones are removed and `1/` is rebuilt from scratch.
    `max_candidates` (per request) only sizes the TensorRT optimization profile of the gpu target.
    """
    model_dir, out = Path(model_dir), Path(out)
    ranker = RankerFiles.read(model_dir)
    meta = ranker.meta
    sources = {precision: ranker.onnx(precision) for precision in PRECISIONS}
    missing = [str(p) for p in sources.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"stored model is missing ranker precisions: {', '.join(missing)}")
    if target == "cpu" and not MODEL_PY.exists():
        raise FileNotFoundError(f"{MODEL_PY} (the Python-backend model) not found")

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for precision in PRECISIONS:
        config = render_config(
            precision,
            meta,
            target=target,
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
            instances=instances,
            preferred_batch_sizes=preferred_batch_sizes,
            intra_op_threads=intra_op_threads,
            max_candidates_per_run=max_candidates_per_run,
            max_candidates=max_candidates,
            dynamic_batching=dynamic_batching,
        )
        model_path = out / model_name(precision)
        model_path.mkdir(exist_ok=True)
        for stale in model_path.iterdir():
            if stale.is_dir() and stale.name.isdigit():
                shutil.rmtree(stale)
        version_dir = model_path / VERSION
        version_dir.mkdir()
        shutil.copyfile(sources[precision], version_dir / "model.onnx")
        if target == "cpu":
            shutil.copyfile(MODEL_PY, version_dir / "model.py")
        _write_if_changed(model_path / "config.pbtxt", config)
        written.append(model_path)
    _write_if_changed(out / "README.md", README)
    return written


def _write_if_changed(path: Path, text: str) -> None:
    """Write only on change, so a Triton server polling the repository sees no spurious edits."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


README = """\
# Triton model repository (rendered)

Rendered by `runners/triton/repository.py` (`render_triton(model_dir, out, target=...)`) from a stored
model directory (`ranker_{fp32,fp16,int8}.onnx` + `ranker.json`). Do not edit by hand: re-render.

```
model_repository/
  README.md                 this file
  ranker_int8/config.pbtxt  rendered config (commit-able)
  ranker_int8/1/model.onnx  the stored ONNX precision      } version dirs are git-ignored
  ranker_int8/1/model.py    cpu target only              } (model_repository/*/[0-9]*/)
  ranker_fp16/...
  ranker_fp32/...
```

Request contract (one request per user, same for both targets):

| tensor               | dtype | shape    |                                                   |
|----------------------|-------|----------|---------------------------------------------------|
| `item_ids`           | INT64 | [1, n]   | candidate item indices, n may differ per request  |
| `user_features`      | FP32  | [1, D]   | the user's feature row                            |
| `candidate_features` | FP32  | [1, n*F] | F floats per candidate, flat, in item_ids order   |
| `scores` (out)       | FP32  | [1, n]   | one score per candidate, in item_ids order        |

D is `ranker.json["user_feature_dim"]`, F is `ranker.json["candidate_feature_dim"]` (the names in
`feature_spec.candidate_features`, models/candidates.py). `candidate_features` is flat because
Triton's ragged batching concatenates along the one dimension (the ONNX Runtime backend requires
ragged inputs to be 1-D); the graph reshapes it to [R, F].

## target "cpu" (this repository as rendered by default)

`backend: "python"`: `1/model.py` (a copy of `runners/triton/backend_model.py`) runs `1/model.onnx` with
ONNX Runtime's CPU provider (`intra_op_num_threads` parameter, default 1). `item_ids` and
`candidate_features` have `allow_ragged_batch: true`, so the dynamic batcher merges requests with
different candidate counts into one `execute()`. It checks each request (ids in [0, `n_items`),
`candidate_features` of shape [1, n*F] with F the `candidate_feature_dim` parameter, finite values;
a bad request gets its own INVALID_ARG error, the others are served), concatenates them into runs of
at most `max_candidates_per_run` candidates (default 1024; the CPU cost per candidate grows with
larger runs), computes `candidate_ends` and runs the graph once per run.
Served by the tritonserver binary of the `nvidia-pytriton` wheel through `runners/triton/server.py`.

## target "gpu" (NGC `nvcr.io/nvidia/tritonserver:<yy.mm>-py3` image)

`platform: "onnxruntime_onnx"`, `KIND_GPU`. Triton's ONNX Runtime backend concatenates the ragged
`item_ids` into [R] and `candidate_features` into [R*F], feeds `candidate_ends` through
`batch_input { kind: BATCH_ACCUMULATED_ELEMENT_COUNT data_type: TYPE_INT32 }` (shape [B]) and
scatters the flat [R] `scores` back per request with
`batch_output { kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "item_ids" }`.
`optimization.execution_accelerators.gpu_execution_accelerator` asks for the TensorRT execution
provider at the precision (FP32 / FP16 / INT8), with an engine cache and one optimization
profile covering 1..max_batch_size requests and up to max_batch_size * max_candidates ids (times F
candidate feature values).

Caveats (not runnable on the CPU dev machines, so unverified here):
* INT8 under TensorRT needs either a Q/DQ (QuantizeLinear/DequantizeLinear, static) ONNX model or an
  INT8 calibration table (`int8_calibration_table_name`). A dynamically quantized ONNX model
  (`MatMulInteger`/`DynamicQuantizeLinear`, the usual CPU int8 export) is not TensorRT-compatible:
  those nodes fall back to the CUDA provider or fail; export a Q/DQ precision for GPUs.
* Nothing checks a request's `candidate_features` size on this target (there is no model.py): Triton
  concatenates the ragged inputs as they come, so a request with other than n*F values fails the whole
  batch in the graph's reshape, or, when the batch total still divides, shifts its neighbours'
  features. Clients must send exactly n*F (runners/stages/ranking.py does).
* The FP16 precision can equally be the fp32 ONNX with `precision_mode: FP16`; TensorRT does the cast.
* The first load builds the TensorRT engines (seconds to minutes); keep `trt_engine_cache_path` on a
  persistent volume.
* Start the image with
  `tritonserver --model-repository=/models` and mount this directory on `/models`.
"""
