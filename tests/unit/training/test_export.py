"""The exported INT8 ranker's graph: static QDQ on the matrix products' inputs, FP32 outputs."""

from __future__ import annotations

from pathlib import Path

import onnx


def test_int8_quantizes_matrix_product_inputs_and_keeps_their_outputs_fp32(artifacts_dir: Path) -> None:
    graph = onnx.load(str(artifacts_dir / "ranker_int8.onnx")).graph
    producer = {out: node for node in graph.node for out in node.output}
    products = [n for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    assert products
    for node in products:
        assert producer[node.input[0]].op_type == "DequantizeLinear", node.name  # activations quantized
        assert producer[node.input[1]].op_type == "DequantizeLinear", node.name  # weights quantized
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & {n.output[0] for n in products}  # no Q/DQ pair after a layer
    last = producer["scores"]
    while last.op_type in ("Squeeze", "Reshape", "Flatten", "Identity"):
        last = producer[last.input[0]]
    assert last.op_type == "Gemm"  # the scores leave the last layer unquantized
