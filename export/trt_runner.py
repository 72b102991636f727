"""Run a serialized TensorRT engine on torch CUDA tensors (no pycuda: torch owns buffers and streams).

Works with TensorRT 10 and 11: named I/O tensors, `set_input_shape`, `set_tensor_address`
and `execute_async_v3` on a torch CUDA stream.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
    if dtype not in table:
        raise TypeError(f"TensorRT tensor type {dtype} has no torch equivalent here")
    return table[dtype]


class TrtRunner:
    """One engine and one execution context. `runner(name=tensor, ...)` -> {output name: tensor}.
    Inputs are moved to the engine's device and dtype; outputs are new CUDA tensors, ready on
    the caller's current stream. `device="cpu"` passes host pointers, for tests/export/trt_stub
    (TensorRT itself needs CUDA)."""

    def __init__(self, plan: str | os.PathLike, device: str | torch.device = "cuda"):
        import tensorrt as trt
        plan = Path(plan)
        if not plan.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {plan}")
        self.trt, self.device = trt, torch.device(device)
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan}: TensorRT could not deserialize the engine (built by another "
                               f"TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if sorted(inputs) != sorted(self.inputs):
            raise ValueError(f"engine inputs are {self.inputs}, got {sorted(inputs)}")
        tensors = {}
        for name in self.inputs:
            x = inputs[name].to(self.device, self.dtypes[name]).contiguous()
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise ValueError(f"input {name!r} of shape {list(x.shape)} is outside the engine's "
                                 f"optimization profile {self.engine.get_tensor_profile_shape(name, 0)}")
            tensors[name] = x
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            tensors[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
        for name, t in tensors.items():
            self.context.set_tensor_address(name, t.data_ptr())
        if self.stream is None:  # host memory: the tests' CPU stand-in for TensorRT (tests/export/trt_stub)
            if not self.context.execute_async_v3(0):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return {name: tensors[name] for name in self.outputs}
        # The engine's stream waits for the inputs' producers; the caller's stream for the engine.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for t in tensors.values():  # the allocator must not reuse them before the engine is done
            t.record_stream(self.stream)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return {name: tensors[name] for name in self.outputs}
