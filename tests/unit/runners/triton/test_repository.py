"""runners/triton/repository.py renders configs Triton can parse, with the right fields, deterministically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from runners.triton.backend_model import RequestError, merge, runs, split, validate_request
from runners.triton.repository import MODEL_PY, PRECISIONS, README, RankerMeta, render_config, render_triton
from tests.paths import ROOT

D, N, F = 24, 1000, 18
TOP_LEVEL_ORDER = [
    "name",
    "backend",
    "platform",
    "max_batch_size",
    "input",
    "batch_input",
    "output",
    "batch_output",
    "dynamic_batching",
    "instance_group",
    "optimization",
    "parameters",
]


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A stored-model directory; the renderer only copies the ONNX bytes, so stand-in bytes do."""
    d = tmp_path / "stored"
    d.mkdir()
    for v in PRECISIONS:
        (d / f"ranker_{v}.onnx").write_bytes(f"onnx bytes of {v}".encode())
    meta = {
        "user_feature_dim": D,
        "n_items": N,
        "candidate_feature_dim": F,
        "feature_spec": {"candidate_features": [f"source{k // 3}.f{k % 3}" for k in range(F)]},
        "version": "x",
    }
    (d / "ranker.json").write_text(json.dumps(meta))
    return d


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def top_level_keys(text: str) -> list[str]:
    keys = []
    for line in text.splitlines():
        if line and not line[0].isspace() and line[0] not in "}]":
            keys.append(line.split(":")[0].split(" ")[0].split("{")[0])
    return keys


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_configs_parse_and_follow_tutorial_order(model_dir: Path, tmp_path: Path, target: str) -> None:
    out = tmp_path / "repo"
    dirs = render_triton(model_dir, out, target=target)
    assert [d.name for d in dirs] == ["ranker_int8", "ranker_fp16", "ranker_fp32"]
    for d in dirs:
        cfg = parse(d / "config.pbtxt")
        assert cfg.name == d.name
        keys = top_level_keys((d / "config.pbtxt").read_text())
        blocks = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]  # repeated `parameters`
        assert blocks == [k for k in TOP_LEVEL_ORDER if k in blocks], blocks
        assert {"name", "max_batch_size", "input", "output", "dynamic_batching", "instance_group"} <= set(
            blocks
        )


def test_cpu_config_fields(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    render_triton(model_dir, out, target="cpu", max_batch_size=32, max_queue_delay_us=700, instances=2)
    for v in PRECISIONS:
        cfg = parse(out / f"ranker_{v}" / "config.pbtxt")
        assert cfg.backend == "python" and cfg.platform == ""
        assert cfg.max_batch_size == 32
        item_ids, user, cand = cfg.input
        assert (item_ids.name, item_ids.data_type, list(item_ids.dims)) == ("item_ids", mc.TYPE_INT64, [-1])
        assert item_ids.allow_ragged_batch
        assert (user.name, user.data_type, list(user.dims)) == ("user_features", mc.TYPE_FP32, [D])
        assert not user.allow_ragged_batch
        assert (cand.name, cand.data_type, list(cand.dims)) == ("candidate_features", mc.TYPE_FP32, [-1])
        assert cand.allow_ragged_batch  # flat [1, n*F] per request, concatenated like item_ids
        (scores,) = cfg.output
        assert (scores.name, scores.data_type, list(scores.dims)) == ("scores", mc.TYPE_FP32, [-1])
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 700
        (group,) = cfg.instance_group
        assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 2
        params = {k: p.string_value for k, p in cfg.parameters.items()}
        assert params["intra_op_num_threads"] == "1" and params["n_items"] == str(N)
        assert params["max_candidates_per_run"] == "1024"
        assert params["candidate_feature_dim"] == str(F)
        assert params["precision"] == v
        assert not cfg.batch_input and not cfg.batch_output and not cfg.HasField("optimization")
        version = out / f"ranker_{v}" / "1"
        assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.py"]
        assert (version / "model.onnx").read_bytes() == f"onnx bytes of {v}".encode()
        assert (version / "model.py").read_bytes() == MODEL_PY.read_bytes()


def test_gpu_config_fields(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    render_triton(
        model_dir, out, target="gpu", max_batch_size=16, max_candidates=300, preferred_batch_sizes=(8, 16)
    )
    for v, precision in zip(PRECISIONS, ["INT8", "FP16", "FP32"], strict=True):
        cfg = parse(out / f"ranker_{v}" / "config.pbtxt")
        assert cfg.platform == "onnxruntime_onnx" and cfg.backend == ""
        assert cfg.max_batch_size == 16
        assert [(i.name, i.data_type, list(i.dims), i.allow_ragged_batch) for i in cfg.input] == [
            ("item_ids", mc.TYPE_INT64, [-1], True),
            ("user_features", mc.TYPE_FP32, [D], False),
            ("candidate_features", mc.TYPE_FP32, [-1], True),  # the ORT backend: ragged inputs are 1-D
        ]
        (batch_input,) = cfg.batch_input
        assert batch_input.kind == mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT
        assert list(batch_input.target_name) == ["candidate_ends"]
        assert batch_input.data_type == mc.TYPE_INT32  # model_config.proto: TYPE_INT32 or TYPE_FP32
        assert list(batch_input.source_input) == ["item_ids"]
        (batch_output,) = cfg.batch_output
        assert batch_output.kind == mc.BatchOutput.BATCH_SCATTER_WITH_INPUT_SHAPE
        assert list(batch_output.target_name) == ["scores"] and list(batch_output.source_input) == [
            "item_ids"
        ]
        assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
        (group,) = cfg.instance_group
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU
        (accel,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert accel.name == "tensorrt"
        assert accel.parameters["precision_mode"] == precision
        # 16 requests x 300 candidates at most; candidate_features holds F values per candidate.
        assert accel.parameters["trt_profile_max_shapes"] == (
            f"item_ids:4800,user_features:16x{D},candidate_ends:16,candidate_features:{4800 * F}"
        )
        assert accel.parameters["trt_profile_opt_shapes"] == (
            f"item_ids:2400,user_features:8x{D},candidate_ends:8,candidate_features:{2400 * F}"
        )
        assert accel.parameters["trt_profile_min_shapes"] == (
            f"item_ids:1,user_features:1x{D},candidate_ends:1,candidate_features:{F}"
        )
        version = out / f"ranker_{v}" / "1"
        assert sorted(p.name for p in version.iterdir()) == ["model.onnx"]  # ORT backend: no model.py


def test_rendering_is_deterministic(model_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    render_triton(model_dir, a)
    render_triton(model_dir, b)
    first = tree_digest(a)
    assert first == tree_digest(b)
    render_triton(model_dir, a)  # re-render in place
    assert tree_digest(a) == first
    assert (a / "README.md").exists()


def test_stale_version_dirs_are_removed_and_target_switch_is_clean(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    render_triton(model_dir, out, target="cpu")
    (out / "ranker_int8" / "2").mkdir()
    (out / "ranker_int8" / "2" / "model.onnx").write_bytes(b"old")
    (out / "ranker_int8" / "notes").mkdir()  # not a version dir: not the renderer's to delete
    render_triton(model_dir, out, target="gpu")
    assert sorted(p.name for p in (out / "ranker_int8").iterdir()) == ["1", "config.pbtxt", "notes"]
    assert not (out / "ranker_int8" / "1" / "model.py").exists()
    render_triton(model_dir, out, target="cpu")
    assert (out / "ranker_int8" / "1" / "model.py").exists()
    assert parse(out / "ranker_int8" / "config.pbtxt").backend == "python"


def test_missing_variant_or_metadata_is_an_error(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "ranker_fp16.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="ranker_fp16"):
        render_triton(model_dir, tmp_path / "repo")
    (model_dir / "ranker.json").write_text(json.dumps({"n_items": 3}))
    with pytest.raises(ValueError, match="user_feature_dim"):
        render_triton(model_dir, tmp_path / "repo")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({}, "candidate_feature_dim must be an integer >= 1"),  # a version exported before the input
        ({"candidate_feature_dim": 0}, "candidate_feature_dim must be an integer >= 1"),
        ({"candidate_feature_dim": "18"}, "candidate_feature_dim must be an integer >= 1"),
        ({"candidate_feature_dim": 2.5}, "candidate_feature_dim must be an integer >= 1"),
        ({"candidate_feature_dim": True}, "candidate_feature_dim must be an integer >= 1"),
        (
            {"candidate_feature_dim": 6, "feature_spec": {"candidate_features": ["a", "b"]}},
            "candidate_feature_dim 6 but feature_spec.candidate_features lists 2",
        ),
    ],
)
def test_candidate_feature_dim_is_required_and_checked(model_dir: Path, tmp_path: Path, extra, match) -> None:
    (model_dir / "ranker.json").write_text(json.dumps({"user_feature_dim": D, "n_items": N, **extra}))
    with pytest.raises(ValueError, match=match):
        render_triton(model_dir, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()  # nothing half-rendered


def test_committed_configs_are_rendered_from_the_contract() -> None:
    """model_repository/*/config.pbtxt are render_config's output (ML-100K dims, default settings)."""
    repo = ROOT / "model_repository"
    meta = RankerMeta(user_feature_dim=221, n_items=1682, candidate_feature_dim=21)
    for v in PRECISIONS:
        assert (repo / f"ranker_{v}" / "config.pbtxt").read_text() == render_config(v, meta), v
    assert (repo / "README.md").read_text() == README


def test_invalid_arguments(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="target"):
        render_triton(model_dir, tmp_path / "repo", target="tpu")
    with pytest.raises(ValueError, match="max_batch_size"):
        render_triton(model_dir, tmp_path / "repo", max_batch_size=0)


# The Python-backend model's pure helpers (runners/triton/backend_model.py, importable without Triton).


def test_merge_and_split_round_trip() -> None:
    ids = [np.array([5, 6, 7]), np.array([1]), np.array([2, 3, 4, 8, 9])]
    rows = [np.full((1, 4), k, dtype=np.float32) for k in range(3)]
    feats = [np.stack([x, -x], 1).reshape(-1).astype(np.float32) for x in ids]  # F = 2: (id, -id)
    item_ids, users, ends, cand = merge(ids, rows, feats)
    assert item_ids.dtype == np.int64 and item_ids.tolist() == [5, 6, 7, 1, 2, 3, 4, 8, 9]
    assert users.shape == (3, 4) and users[:, 0].tolist() == [0, 1, 2]
    assert ends.dtype == np.int32 and ends.tolist() == [3, 4, 9]  # BATCH_ACCUMULATED_ELEMENT_COUNT
    assert cand.dtype == np.float32 and cand.shape == (9 * 2,)  # flat, in item_ids order
    assert cand.reshape(-1, 2).tolist() == [[x, -x] for x in item_ids.tolist()]
    parts = split(item_ids.astype(np.float32) * 10, ends)
    assert [p.tolist() for p in parts] == [[50, 60, 70], [10], [20, 30, 40, 80, 90]]
    with pytest.raises(RuntimeError):
        split(np.zeros(8, dtype=np.float32), ends)


@pytest.mark.parametrize(
    ("counts", "limit", "expected"),
    [
        ([500, 500, 500], 1024, [(0, 2), (2, 3)]),  # two 500-candidate requests a run
        ([2000, 10, 10], 1024, [(0, 1), (1, 3)]),  # a request over the limit runs alone
        ([1, 1, 1], 1, [(0, 1), (1, 2), (2, 3)]),
        ([300, 300], 10_000, [(0, 2)]),
        ([], 1024, []),
    ],
)
def test_runs_group_consecutive_requests_under_the_limit(counts, limit, expected) -> None:
    assert [(r.start, r.stop) for r in runs(counts, limit)] == expected


def test_validate_request() -> None:
    user = np.zeros((1, 4), dtype=np.float32)

    def cf(n: int, f: int = 3) -> np.ndarray:
        return np.arange(n * f, dtype=np.float32).reshape(1, -1)

    ids, feats = validate_request(np.array([[0, 9]]), user, cf(2), 10, 3)
    assert ids.tolist() == [0, 9] and feats.tolist() == list(range(6))
    with pytest.raises(RequestError, match=r"\[0, 10\)"):
        validate_request(np.array([[0, 10]]), user, cf(2), 10, 3)
    with pytest.raises(RequestError, match=r"\[0, 10\)"):
        validate_request(np.array([[-1]]), user, cf(1), 10, 3)
    with pytest.raises(RequestError, match="one request"):
        validate_request(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 4), dtype=np.float32), cf(6), 10, 3)
    empty_ids, empty_feats = validate_request(np.zeros((1, 0), dtype=np.int64), user, cf(0), 10, 3)
    assert empty_ids.size == 0 and empty_feats.size == 0
    # candidate_features must hold exactly F values per item id, as one [1, n*F] row.
    for bad in (cf(2, 2), cf(3), cf(2).reshape(2, 3), cf(2).reshape(-1), cf(2).reshape(1, 2, 3)):
        with pytest.raises(RequestError, match=r"candidate_features must have shape \[1, n\*F\] = \[1, 6\]"):
            validate_request(np.array([[0, 9]]), user, bad, 10, 3)
    for value in (np.nan, np.inf, -np.inf):
        poisoned = cf(2)
        poisoned[0, 4] = value
        with pytest.raises(RequestError, match="finite"):
            validate_request(np.array([[0, 9]]), user, poisoned, 10, 3)


class _FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self.message, self.code = message, code


class _FakeResponse:
    def __init__(
        self, output_tensors: list[_FakeTensor] | None = None, error: _FakeError | None = None
    ) -> None:
        self.output_tensors, self.error = output_tensors or [], error


class _FakeSession:
    """Known answer: score = item id + 1000 * request row + user_features[row, 0]
    + 10 * candidate_features[candidate, 1] (F = MODEL_F)."""

    def __init__(self, poison: int | None = None) -> None:
        self.calls: list[dict[str, np.ndarray]] = []
        self.poison = poison

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls.append(feeds)
        ids, users, ends = feeds["item_ids"], feeds["user_features"], feeds["candidate_ends"]
        cand = feeds["candidate_features"].reshape(-1, MODEL_F)  # the graph's reshape
        if self.poison is not None and self.poison in ids:
            raise RuntimeError("poisoned")
        row = (np.arange(len(ids))[:, None] >= ends[None, :]).sum(1)
        return [(ids + 1000 * row + users[row, 0] + 10 * cand[:, 1]).astype(np.float32)]


MODEL_F = 2  # candidate_feature_dim of the fake model


@pytest.fixture()
def python_model(monkeypatch: pytest.MonkeyPatch):
    """runners/triton/backend_model.TritonPythonModel with a fake pb_utils and session (no Triton, no ORT)."""
    from types import SimpleNamespace

    import runners.triton.backend_model as triton_model

    fake = SimpleNamespace(
        get_input_tensor_by_name=lambda request, name: request.get(name),
        Tensor=_FakeTensor,
        InferenceResponse=_FakeResponse,
        TritonError=_FakeError,
    )
    monkeypatch.setattr(triton_model, "pb_utils", fake)
    model = triton_model.TritonPythonModel()
    model.model_name, model.n_items, model.session = "ranker_test", 100, _FakeSession()
    model.max_candidates_per_run = 1024
    model.candidate_feature_dim = MODEL_F
    return model


def _request(ids: list[int], user0: float, feats: np.ndarray | None = None) -> dict[str, _FakeTensor]:
    """One request; candidate features default to zeros, [1, n*F]."""
    if feats is None:
        feats = np.zeros((1, len(ids) * MODEL_F), dtype=np.float32)
    return {
        "item_ids": _FakeTensor("item_ids", np.array([ids], dtype=np.int64)),
        "user_features": _FakeTensor("user_features", np.array([[user0, 0.0]], dtype=np.float32)),
        "candidate_features": _FakeTensor("candidate_features", np.asarray(feats, dtype=np.float32)),
    }


def test_execute_merges_ragged_requests_into_one_run(python_model) -> None:
    requests = [
        _request([1, 2, 3], 0.5),
        _request([99, 100], 0.0),  # out of range: its own INVALID_ARG error
        _request([7], 0.25),
        {"item_ids": _FakeTensor("item_ids", np.array([[1]], dtype=np.int64))},  # missing user_features
        _request([], 0.0),  # no candidates: empty scores, not sent to the model
        _request([4, 5, 6, 8, 9], 0.75),
    ]
    responses = python_model.execute(requests)
    assert len(responses) == len(requests)
    (call,) = python_model.session.calls  # ONE run for the whole batch
    assert call["item_ids"].tolist() == [1, 2, 3, 7, 4, 5, 6, 8, 9]
    assert call["candidate_ends"].tolist() == [3, 4, 9] and call["candidate_ends"].dtype == np.int32
    scores = [r.output_tensors[0].array.tolist() if r.error is None else None for r in responses]
    assert scores[0] == [[1.5, 2.5, 3.5]]
    assert scores[2] == [[1007.25]]
    assert scores[4] == [[]]
    assert scores[5] == [[2004.75, 2005.75, 2006.75, 2008.75, 2009.75]]
    assert responses[1].error.code == "INVALID_ARG" and "[0, 100)" in responses[1].error.message
    assert responses[3].error.code == "INVALID_ARG" and "user_features" in responses[3].error.message


def test_execute_feeds_candidate_features_aligned_with_item_ids(python_model) -> None:
    """Ragged requests' flat candidate features are concatenated in item_ids order; a request whose
    candidate_features has the wrong size (or is missing, or not finite) gets its own INVALID_ARG
    error and the others in the batch are served."""

    def feats(ids: list[int]) -> np.ndarray:  # F = 2 per candidate: (0, id / 100)
        return np.array([[v for x in ids for v in (0.0, x / 100)]], dtype=np.float32)

    no_feats = _request([3], 0.0)
    del no_feats["candidate_features"]
    nan_feats = feats([4])
    nan_feats[0, 1] = np.nan
    requests = [
        _request([10, 20], 0.0, feats([10, 20])),
        _request([30, 40, 50], 0.0, feats([30, 40])),  # 2 candidates' features for 3 ids
        _request([60], 0.5, feats([60])),
        _request([70], 0.0, np.zeros((1, 3), dtype=np.float32)),  # 3 values, F = 2
        no_feats,
        _request([4], 0.0, nan_feats),
        _request([80, 90, 95], 0.0, feats([80, 90, 95]).reshape(3, 2)),  # not one [1, n*F] row
        _request([5, 6, 7], 0.25, feats([5, 6, 7])),
    ]
    responses = python_model.execute(requests)
    (call,) = python_model.session.calls
    assert call["item_ids"].tolist() == [10, 20, 60, 5, 6, 7]
    assert call["candidate_features"].dtype == np.float32 and call["candidate_features"].ndim == 1
    np.testing.assert_allclose(call["candidate_features"].reshape(-1, 2)[:, 1], call["item_ids"] / 100)
    served = {i: r.output_tensors[0].array for i, r in enumerate(responses) if r.error is None}
    assert sorted(served) == [0, 2, 7]
    np.testing.assert_allclose(served[0], [[10 + 1.0, 20 + 2.0]], rtol=1e-6)
    np.testing.assert_allclose(served[2], [[60 + 1000 + 0.5 + 6.0]], rtol=1e-6)
    np.testing.assert_allclose(served[7], [[2005.25 + 0.5, 2006.25 + 0.6, 2007.25 + 0.7]], rtol=1e-6)
    for i in (1, 3, 6):
        assert responses[i].error.code == "INVALID_ARG", i
        assert "candidate_features must have shape [1, n*F]" in responses[i].error.message, i
    assert "[1, 6]" in responses[1].error.message and "got [1, 4]" in responses[1].error.message
    assert responses[4].error.code == "INVALID_ARG" and "candidate_features" in responses[4].error.message
    assert responses[5].error.code == "INVALID_ARG" and "finite" in responses[5].error.message


def test_execute_splits_a_large_batch_into_runs(python_model) -> None:
    python_model.max_candidates_per_run = 4
    responses = python_model.execute([_request([1, 2, 3], 0.0), _request([4], 0.0), _request([5, 6], 0.0)])
    calls = python_model.session.calls
    assert [c["item_ids"].tolist() for c in calls] == [[1, 2, 3, 4], [5, 6]]
    assert [c["candidate_ends"].tolist() for c in calls] == [[3, 4], [2]]
    assert [r.output_tensors[0].array.tolist() for r in responses] == [
        [[1.0, 2.0, 3.0]],
        [[1004.0]],
        [[5.0, 6.0]],
    ]


def test_execute_isolates_a_request_the_model_fails_on(python_model) -> None:
    python_model.session = _FakeSession(poison=42)
    one = np.array([[0.0, 0.5]], dtype=np.float32)
    responses = python_model.execute([_request([1, 2], 0.0), _request([42], 0.0), _request([3], 0.0, one)])
    assert responses[1].error is not None and "poisoned" in responses[1].error.message
    assert responses[0].output_tensors[0].array.tolist() == [[1.0, 2.0]]
    assert responses[2].output_tensors[0].array.tolist() == [[8.0]]  # scored alone (row 0), its features


def _model_args(tmp_path: Path, inputs: list[str], params: dict[str, str]) -> dict[str, str]:
    """initialize()'s arguments for a tiny ONNX graph with ``inputs`` (the names are what it checks)."""
    import onnx
    from onnx import TensorProto, helper

    x = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None]) for name in inputs]
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None])
    graph = helper.make_graph([helper.make_node("Identity", [inputs[-1]], ["scores"])], "g", x, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "1").mkdir(parents=True)
    onnx.save(model, str(tmp_path / "1" / "model.onnx"))
    config = {"name": "ranker_test", "parameters": {k: {"string_value": v} for k, v in params.items()}}
    return {"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1"}


def test_initialize_reads_the_parameters_and_checks_the_graph_inputs(tmp_path: Path) -> None:
    from runners.triton.backend_model import TritonPythonModel

    four = ["item_ids", "user_features", "candidate_ends", "candidate_features"]
    model = TritonPythonModel()
    model.initialize(_model_args(tmp_path / "ok", four, {"candidate_feature_dim": "18", "n_items": "7"}))
    assert (model.candidate_feature_dim, model.n_items, model.max_candidates_per_run) == (18, 7, 1024)

    with pytest.raises(RuntimeError, match="candidate_feature_dim is missing"):
        TritonPythonModel().initialize(_model_args(tmp_path / "noparam", four, {"n_items": "7"}))
    with pytest.raises(RuntimeError, match="not an integer >= 1"):
        TritonPythonModel().initialize(_model_args(tmp_path / "zero", four, {"candidate_feature_dim": "0"}))
    with pytest.raises(RuntimeError, match=r"expected.*candidate_features"):  # a 3-input (older) ranker
        TritonPythonModel().initialize(
            _model_args(tmp_path / "old", four[:3], {"candidate_feature_dim": "18"})
        )
