"""fp16 ONNX graphs with fp32 islands, the precision a strongly typed TensorRT network builds.

Every float tensor of the graph becomes float16, except around the ops whose range or
accumulation needs float32: LayerNormalization, Softmax / LogSoftmax (sums of exponentials),
and the final L2 normalisation (a sum of squares overflows fp16 past |x| ~ 11 at D = 512).
The normalisation's consumers stay float32 up to the next matrix product, so the division and
everything after it (the graph's outputs) are float32. Casts are inserted where the two
precisions meet; fp32 initializers consumed by an fp16 op get an fp16 copy (no Cast node).
Graph inputs and outputs keep their types: float32 in and out, int32 ids untouched.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP32_OPS = {"LayerNormalization", "Softmax", "LogSoftmax", "ReduceL2", "LpNormalization"}
NORMALISATION_OPS = {"ReduceL2", "LpNormalization"}
MATRIX_OPS = {"MatMul", "Gemm", "Conv", "Einsum"}  # where an fp32 normalisation tail ends
SHAPE_OPS = {"Shape", "Size"}  # read no values: any precision will do
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


class Fp16Error(ValueError):
    """A graph this converter cannot handle; the message names the node."""


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Constant nodes of tensors and floats become initializers, so all constants are converted
    one way (integer-valued forms stay: their outputs are not floats)."""
    keep = []
    for node in graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" else None
        if attr is not None and attr.name in ("value", "value_float", "value_floats"):
            value = helper.get_attribute_value(attr)
            array = numpy_helper.to_array(value) if attr.name == "value" else np.array(value, np.float32)
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _fp32_nodes(graph: onnx.GraphProto) -> set[int]:
    """Indices of the nodes that compute in float32 (see the module docstring)."""
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    marked = {i for i, n in enumerate(graph.node) if n.op_type in FP32_OPS}
    todo = [i for i, n in enumerate(graph.node) if n.op_type in NORMALISATION_OPS]
    while todo:  # the normalisation's tail: its consumers, up to the next matrix product
        for out in graph.node[todo.pop()].output:
            for j in consumers.get(out, []):
                if j not in marked and graph.node[j].op_type not in MATRIX_OPS:
                    marked.add(j)
                    todo.append(j)
    return marked


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of a float32 model with float32 islands and unchanged I/O types."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise Fp16Error(f"node {node.name!r} ({node.op_type}) has a subgraph: not supported")
    _constants_to_initializers(graph)
    types = _elem_types(model)
    fp32 = _fp32_nodes(graph)
    initializers = {t.name: t for t in graph.initializer}
    # (tensor, precision) -> the name that holds it in that precision
    sources = set(initializers) | {i.name for i in graph.input}
    available = {(name, FLOAT): name for name in sources if types.get(name) == FLOAT}
    nodes, new_inits = [], []

    def get(name: str, want: int, where: onnx.NodeProto) -> str:
        if (name, want) in available:
            return available[(name, want)]
        if (name, FLOAT) not in available and (name, HALF) not in available:
            raise Fp16Error(f"node {where.name!r} ({where.op_type}) reads {name!r} before it is computed")
        suffix = "fp16" if want == HALF else "fp32"
        if name in initializers:  # convert the stored value once: no Cast node at run time
            array = numpy_helper.to_array(initializers[name]).astype(np.float16 if want == HALF else np.float32)
            new_inits.append(numpy_helper.from_array(array, f"{name}__{suffix}"))
        else:
            source = available[(name, FLOAT if want == HALF else HALF)]
            nodes.append(helper.make_node("Cast", [source], [f"{name}__{suffix}"], name=f"{name}__cast_{suffix}",
                                          to=want))
        available[(name, want)] = f"{name}__{suffix}"
        return available[(name, want)]

    for i, node in enumerate(graph.node):
        want = FLOAT if i in fp32 else HALF
        for k, name in enumerate(node.input):
            if name and types.get(name) == FLOAT:
                if node.op_type in SHAPE_OPS:
                    want_here = HALF if (name, HALF) in available else FLOAT
                else:
                    want_here = want
                node.input[k] = get(name, want_here, node)
        if want == HALF:
            _retype_attributes(node)
        for out in node.output:
            if types.get(out) == FLOAT:
                available[(out, want)] = out
            elif out and out not in types:
                raise Fp16Error(f"node {node.name!r} ({node.op_type}): no type inferred for output {out!r}")
        nodes.append(node)

    # Graph outputs computed in fp16 get a final Cast under their own name.
    for out in graph.output:
        if types[out.name] == FLOAT and available.get((out.name, FLOAT)) != out.name:
            half = f"{out.name}__fp16"
            for node in nodes:
                node.output[:] = [half if o == out.name else o for o in node.output]
                node.input[:] = [half if o == out.name else o for o in node.input]
            nodes.append(helper.make_node("Cast", [half], [out.name], name=f"{out.name}__output_cast", to=FLOAT))

    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [t for t in (*graph.initializer, *new_inits) if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # stale types: inferred again below
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Attributes that name float32 as the type a node produces, for a node computing in fp16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = HALF
        elif node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == FLOAT:
            value = numpy_helper.to_array(attr.t).astype(np.float16)
            attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
