"""A tiny Python-backend model repository for tests of the tritonserver process itself (its lifetime,
signals, shared memory): two identity models, so the server runs two backend stubs. It starts in well
under a second and needs no trained model (tests/integration/conftest.py renders the real rankers)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
MODEL_PY = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
"""
MODELS = ("echo_a", "echo_b")


def write_echo_repository(root: Path) -> Path:
    for name in MODELS:
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        (root / name / "1" / "model.py").write_text(MODEL_PY)
    return root


@pytest.fixture(scope="session")
def echo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_echo_repository(tmp_path_factory.mktemp("echo_repository"))
