"""The fp16 graph conversion on small hand-built graphs: islands, casts, outputs, refusals."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.fp16 import Fp16Error, convert_to_fp16


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _types(model):
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def test_matmul_softmax_normalise_graph():
    """x -> MatMul(W) -> Softmax -> MatMul(W) -> L2 normalise -> y: matrix products in fp16,
    softmax and the normalisation tail in fp32, y float32 under its own name, W shared."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    f32 = TensorProto.FLOAT
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Softmax", ["a"], ["s"], axis=-1),
             helper.make_node("MatMul", ["s", "w"], ["b"]),
             helper.make_node("ReduceL2", ["b"], ["n"], axes=[-1], keepdims=1),
             helper.make_node("Constant", [], ["eps"], value_float=1e-12),
             helper.make_node("Clip", ["n", "eps"], ["c"]),
             helper.make_node("Div", ["b", "c"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", f32, [None, 8])],
                   [helper.make_tensor_value_info("y", f32, [None, 8])],
                   [numpy_helper.from_array(w, "w")])
    half = convert_to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    types = _types(half)
    by_op = {n.op_type: n for n in half.graph.node}
    assert types[by_op["Softmax"].input[0]] == f32
    assert {types[i] for i in by_op["MatMul"].input} == {TensorProto.FLOAT16}
    assert types[by_op["ReduceL2"].input[0]] == f32 and types[by_op["Div"].output[0]] == f32
    assert types["eps"] == f32  # the epsilon stays representable (1e-12 is 0 in fp16)
    assert [o.name for o in half.graph.output] == ["y"] and [i.name for i in half.graph.input] == ["x"]

    x = rng.standard_normal((3, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(half.SerializeToString()).run(None, {"x": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=5e-3)


def test_fp16_outputs_get_a_cast_under_their_own_names():
    """y is a graph output computed in fp16 and also read by an fp32 op (Softmax)."""
    f32 = TensorProto.FLOAT
    model = _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"]),
                    helper.make_node("Softmax", ["y"], ["s"])],
                   [helper.make_tensor_value_info("x", f32, [2])],
                   [helper.make_tensor_value_info(n, f32, [2]) for n in ("y", "z", "s")])
    half = convert_to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    types = _types(half)
    assert [o.name for o in half.graph.output] == ["y", "z", "s"] and {types[n] for n in "yzs"} == {f32}
    relu = next(n for n in half.graph.node if n.op_type == "Relu")
    assert types[relu.output[0]] == TensorProto.FLOAT16
    x = np.array([-1.0, 2.0], np.float32)
    y, z, s = ort.InferenceSession(half.SerializeToString()).run(None, {"x": x})
    assert y.tolist() == [0.0, 2.0] and z.tolist() == [0.0, -2.0]
    np.testing.assert_allclose(s, np.exp([0.0, 2.0]) / np.exp([0.0, 2.0]).sum(), rtol=1e-3)


def test_subgraphs_are_refused_by_name():
    f32 = TensorProto.FLOAT
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "b", [],
                               [helper.make_tensor_value_info("o", f32, [1])])
    model = _model([helper.make_node("If", ["c"], ["y"], name="choose", then_branch=branch, else_branch=branch)],
                   [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                    helper.make_tensor_value_info("x", f32, [1])],
                   [helper.make_tensor_value_info("y", f32, [1])])
    with pytest.raises(Fp16Error, match="node 'choose' \\(If\\) has a subgraph"):
        convert_to_fp16(model)
