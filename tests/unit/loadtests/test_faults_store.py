"""The fault suite's breakages: a truncated file, bit rot, and an ONNX model whose largest weight tensor
is random but which stays valid ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from loadtests.faults.store import largest_file, randomize_largest_initializer, rot, truncate


def test_truncate_and_rot(tmp_path: Path) -> None:
    data = bytes(range(256)) * 16
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(data)
    b.write_bytes(data)
    assert truncate(a) == "a.bin cut from 4096 to 2048 bytes" and a.read_bytes() == data[:2048]
    rot(b, nbytes=8)
    changed = [i for i, (x, y) in enumerate(zip(b.read_bytes(), data, strict=True)) if x != y]
    assert b.stat().st_size == 4096 and 0 < len(changed) <= 8
    assert all(1024 <= i < 3072 for i in changed)  # in the middle half
    assert largest_file(tmp_path, ".bin") == b


def test_randomized_initializer_keeps_the_model_valid(tmp_path: Path) -> None:
    small = numpy_helper.from_array(np.ones((2,), np.float32), "bias")
    big = numpy_helper.from_array(np.full((4, 2), 0.5, np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["h"]), helper.make_node("Add", ["h", "bias"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [small, big],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = {"x": np.ones((1, 4), np.float32)}
    before = ort.InferenceSession(str(path)).run(None, x)[0]
    assert "initializer weight (float32, 8 values) randomized" in randomize_largest_initializer(path)
    after = ort.InferenceSession(str(path)).run(None, x)[0]
    assert np.isfinite(after).all() and not np.allclose(before, after)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    assert (weights["bias"] == 1).all() and weights["weight"].shape == (4, 2)
