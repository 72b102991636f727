"""A CPU stand-in for the `tensorrt` Python bindings, for tests only (TensorRT cannot be installed here).

It implements the subset export/to_trt.py and export/trt_runner.py call, with the behaviour the
TensorRT 10.x / 11.x Python API documents:
- `__version__`; TensorRT 10 has the FP16/INT8 builder flags and NetworkDefinitionCreationFlag
  EXPLICIT_BATCH = 0 (ignored), STRONGLY_TYPED = 1; TensorRT 11 has no precision flags and only
  STRONGLY_TYPED = 0, deprecated and ignored: its networks are always strongly typed;
- IBuilderConfig.set_timing_cache(cache, ignore_mismatch) returns False for a cache made by another
  TensorRT version or device, and get_timing_cache() is then None (no cache set);
- Builder.build_serialized_network returns None when the build fails;
- Runtime.deserialize_cuda_engine returns None for a plan of another TensorRT version;
- IExecutionContext.set_input_shape is False outside the optimization profile (on every axis);
- a profile must give every input of the network its rank and, on its fixed axes, its sizes,
  and cover each dynamic axis (min >= 1 here: an empty caption or batch is never sent);
  the build fails (returns None) otherwise.
The "engine" is the parsed ONNX graph, run by ONNX Runtime on the CPU when executed; tensor
addresses are host pointers (torch CPU tensors' data_ptr()), so engine outputs are real.

Configured at import by the environment: TBPS_TRT_STUB_VERSION (default 10.8.0.43),
TBPS_TRT_STUB_GPU (the device name timing caches are tied to), TBPS_TRT_STUB_BUILD=none (every
build fails). Load it as `tensorrt` (tests/export/test_to_trt.py's `trt_stub` fixture).
"""
from __future__ import annotations

import ctypes
import enum
import json
import os

import numpy as np
import onnx

__version__ = os.environ.get("TBPS_TRT_STUB_VERSION", "10.8.0.43")
MAJOR = int(__version__.split(".")[0])
GPU = os.environ.get("TBPS_TRT_STUB_GPU", "Stub GPU")
_BUILD_FAILS = os.environ.get("TBPS_TRT_STUB_BUILD") == "none"
_PLAN_MAGIC, _CACHE_MAGIC = b"STUBPLAN", b"STUBTCACHE"


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = WARNING):
        self.min_severity = min_severity


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 8


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


if MAJOR >= 11:  # weak typing removed: no precision flags; STRONGLY_TYPED kept (renumbered) but ignored
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0})
    BuilderFlag = enum.IntEnum("BuilderFlag", {"DEBUG": 0, "GPU_FALLBACK": 1, "REFIT": 2, "DISABLE_TIMING_CACHE": 3,
                                               "TF32": 4})
else:
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {
        "EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 2, "PREFER_JIT_PYTHON_PLUGINS": 3})
    BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4,
                                               "DISABLE_TIMING_CACHE": 5, "TF32": 6})

_ONNX_TYPES = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
               onnx.TensorProto.INT32: DataType.INT32, onnx.TensorProto.INT64: DataType.INT64,
               onnx.TensorProto.BOOL: DataType.BOOL}
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32,
          DataType.INT64: np.int64, DataType.BOOL: np.bool_}


class IHostMemory:
    """Serialized bytes; like the real one, `bytes(memory)` copies them out."""

    def __init__(self, data: bytes):
        self._data = data
        self.nbytes = len(data)

    def __bytes__(self) -> bytes:
        return self._data


def _pack(magic: bytes, header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return magic + len(head).to_bytes(4, "little") + head + body


def _unpack(magic: bytes, data: bytes) -> tuple[dict, bytes] | None:
    if not data.startswith(magic):
        return None
    n = int.from_bytes(data[len(magic):len(magic) + 4], "little")
    start = len(magic) + 4
    return json.loads(data[start:start + n]), data[start + n:]


class ITimingCache:
    def __init__(self, header: dict | None, entries: list[str]):
        self.header, self.entries = header, entries

    def serialize(self) -> IHostMemory:
        return IHostMemory(_pack(_CACHE_MAGIC, dict(self.header, entries=self.entries)))


class INetworkDefinition:
    def __init__(self, flags: int):
        self.flags = flags
        self.model: onnx.ModelProto | None = None


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger):
        self.network, self._errors = network, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> str:
        return self._errors[index]

    def parse_from_file(self, path: str) -> bool:
        try:
            self.network.model = onnx.load(path)
        except Exception as e:  # the real parser reports every failure through get_error
            self._errors.append(f"In node -1 (parseGraph): INVALID_GRAPH: {type(e).__name__}: {e}")
            return False
        return True


class IOptimizationProfile:
    def __init__(self):
        self.shapes: dict[str, tuple[tuple, tuple, tuple]] = {}

    def set_shape(self, name: str, min, opt, max) -> None:
        if not all(a <= b <= c for a, b, c in zip(min, opt, max)):
            raise ValueError(f"profile of {name}: min <= opt <= max does not hold")
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class IBuilderConfig:
    def __init__(self):
        self.pools, self.profiles, self._cache = {}, [], None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        if not serialized_timing_cache:
            return ITimingCache({"tensorrt": __version__, "gpu": GPU}, [])
        unpacked = _unpack(_CACHE_MAGIC, bytes(serialized_timing_cache))
        if unpacked is None:
            return ITimingCache(None, [])
        header, _ = unpacked
        return ITimingCache({k: header[k] for k in ("tensorrt", "gpu")}, header["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        mine = cache.header == {"tensorrt": __version__, "gpu": GPU}
        if not (mine or (ignore_mismatch and cache.header and cache.header["tensorrt"] == __version__)):
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._cache

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: Logger):
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        if _BUILD_FAILS or network.model is None:
            return None
        dynamic = [i.name for i in network.model.graph.input
                   if any(d.dim_param or d.dim_value <= 0 for d in i.type.tensor_type.shape.dim)]
        if not config.profiles or any(n not in p.shapes for p in config.profiles for n in dynamic):
            return None  # a dynamic input without a profile: TensorRT logs an error and builds nothing
        for i in network.model.graph.input:
            dims = [None if d.dim_param or d.dim_value <= 0 else d.dim_value for d in i.type.tensor_type.shape.dim]
            for p in config.profiles:
                for shape in p.shapes.get(i.name, ()):
                    if len(shape) != len(dims) or any(
                            (size != fixed) if fixed is not None else size < 1 for size, fixed in zip(shape, dims)):
                        return None  # a profile that does not fit the network: TensorRT logs it, builds nothing
        strongly_typed = MAJOR >= 11 or bool(network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        if config._cache is not None:  # the build adds its tactic timings to the attached cache
            config._cache.entries.append(network.model.graph.name or "graph")
        return IHostMemory(_pack(_PLAN_MAGIC, {"tensorrt": __version__, "flags": network.flags,
                                               "strongly_typed": strongly_typed,
                                               "profiles": [p.shapes for p in config.profiles]},
                                 network.model.SerializeToString()))


def plan_header(plan: bytes) -> dict:
    """Test helper (not TensorRT API): what a stub plan was built with."""
    return _unpack(_PLAN_MAGIC, plan)[0]


class Runtime:
    def __init__(self, logger: Logger):
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        unpacked = _unpack(_PLAN_MAGIC, bytes(serialized_engine))
        if unpacked is None or unpacked[0]["tensorrt"] != __version__:
            return None  # TensorRT logs "the engine plan file is not compatible with this version"
        return ICudaEngine(*unpacked)


class ICudaEngine:
    def __init__(self, header: dict, model_bytes: bytes):
        import onnxruntime as ort
        model = onnx.load_from_string(model_bytes)
        self.profiles = [{k: tuple(map(tuple, v)) for k, v in p.items()} for p in header["profiles"]]
        self.session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        self._modes = {i.name: TensorIOMode.INPUT for i in model.graph.input}
        self._modes.update({o.name: TensorIOMode.OUTPUT for o in model.graph.output})
        self._names = list(self._modes)
        self._types = {v.name: _ONNX_TYPES[v.type.tensor_type.elem_type]
                       for v in [*model.graph.input, *model.graph.output]}

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._modes[name]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._types[name]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple]:
        return list(self.profiles[profile_index][name])

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        low, _, high = self.engine.profiles[0][name]
        if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.shapes:
            return self.shapes[name]
        (batch,) = {s[0] for s in self.shapes.values()}  # every output's first dimension is the batch
        out = next(o for o in self.engine.session.get_outputs() if o.name == name)
        return (batch, *out.shape[1:])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = memory
        return True

    def _view(self, name: str) -> np.ndarray:
        dtype = np.dtype(_NUMPY[self.engine.get_tensor_dtype(name)])
        shape = self.get_tensor_shape(name)
        size = int(np.prod(shape)) * dtype.itemsize
        return np.frombuffer((ctypes.c_char * size).from_address(self.addresses[name]), dtype).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        names = self.engine._names
        feeds = {n: self._view(n).copy() for n in names if self.engine.get_tensor_mode(n) == TensorIOMode.INPUT}
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == TensorIOMode.OUTPUT]
        for name, value in zip(outputs, self.engine.session.run(outputs, feeds)):
            result = np.ascontiguousarray(value, dtype=_NUMPY[self.engine.get_tensor_dtype(name)])
            ctypes.memmove(self.addresses[name], result.ctypes.data, result.nbytes)
        return True
