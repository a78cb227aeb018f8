"""A fake `tensorrt` module whose every name is checked against a real release's surface.

`FakeTensorRT(surface)` behaves enough like TensorRT for the builder and the backend to
run end to end (parse an ONNX into layers, build a "plan", deserialize it, execute on a
FakeCuda memory), but any attribute the real release lacks raises AttributeError, and
every name used is recorded in `.used` ("Class.attr" / "Enum.MEMBER" / "module_name").
So a test run on the 11.x surface fails the moment code touches BuilderFlag.FP16.
"""
from __future__ import annotations

import contextlib
import itertools
import json
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

MAGIC = b"FAKETRT\x00"
CACHE_MAGIC = b"FAKECACHE "
ONNX_TYPES = {1: "FLOAT", 10: "HALF", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
NP = {"FLOAT": np.float32, "HALF": np.float16, "UINT8": np.uint8, "INT8": np.int8, "INT32": np.int32,
      "INT64": np.int64, "BOOL": np.bool_}
LAYER_OF_OP = {"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "ReduceMean": "REDUCE",
               "ReduceSum": "REDUCE", "ReduceMax": "REDUCE", "ReduceL2": "REDUCE", "QuantizeLinear": "QUANTIZE",
               "DequantizeLinear": "DEQUANTIZE", "Conv": "CONVOLUTION", "Cast": "CAST", "Transpose": "SHUFFLE"}


class FakeState:
    """What tests steer (failures) and inspect (builds, timing caches)."""

    def __init__(self) -> None:
        self.parse_errors: Dict[int, str] = {}  # node index -> description
        self.build_fails = False
        self.num_dla_cores = 2
        self.builds: List[Dict[str, Any]] = []
        self.timing_cache_loaded: List[bytes] = []
        self.build_empty = False  # build_serialized_network returns an empty plan
        self.parser_flags: List[str] = []  # OnnxParser.set_flag calls
        self.cuda: Optional["FakeCuda"] = None
        self.executions = 0
        # trt.init_libnvinfer_plugins calls (namespace each); a parse or load of a plugin node needs one
        self.plugin_inits: List[str] = []


class EnumValue:
    def __init__(self, enum: str, name: str, value: int) -> None:
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumValue) and (other.enum, other.name) == (self.enum, self.name)

    def __hash__(self) -> int:
        return hash((self.enum, self.name))

    def __str__(self) -> str:
        return f"{self.enum}.{self.name}"

    __repr__ = __str__


class FakeEnum:
    def __init__(self, fake: "FakeTensorRT", name: str) -> None:
        self._fake, self._name = fake, name
        self.__members__ = {k: EnumValue(name, k, v) for k, v in fake._surface["enums"][name].items()}

    def __getattr__(self, member: str) -> EnumValue:
        if member.startswith("_"):
            raise AttributeError(member)
        if member not in self.__members__:
            raise AttributeError(f"tensorrt {self._fake.__version__}: {self._name}.{member} does not exist")
        self._fake.used.add(f"{self._name}.{member}")
        return self.__members__[member]


class FakeClass:
    """trt.Builder / trt.Logger ...: callable, class attributes checked (Logger.WARNING)."""

    def __init__(self, fake: "FakeTensorRT", name: str, impl: Callable[..., Any]) -> None:
        self._fake, self._name, self._impl = fake, name, impl

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self._impl(self._fake, *args, **kw)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        self._fake.check(self._name, attr)
        if attr in ("VERBOSE", "INFO", "WARNING", "ERROR", "INTERNAL_ERROR"):
            return EnumValue("Severity", attr, 0)
        return ClassMember(self._name, attr)  # a method/property the real class has (feature probes)


class ClassMember:
    """Stands for `trt.<Class>.<attr>` read off the class itself (e.g. hasattr(trt.Builder, ...))."""

    def __init__(self, cls: str, attr: str) -> None:
        self.cls, self.attr = cls, attr

    def __repr__(self) -> str:
        return f"<{self.cls}.{self.attr}>"


def _not_constructible(fake: "FakeTensorRT", *args: Any, **kw: Any) -> Any:
    raise TypeError("fake tensorrt: this class is not constructed directly")


class Checked:
    """Base of fake objects: public attribute reads and writes must exist in the real class."""

    _trt_class = ""

    def __init__(self, fake: "FakeTensorRT") -> None:
        object.__setattr__(self, "_fake", fake)

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            object.__getattribute__(self, "_fake").check(type(self)._trt_class, name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            self._fake.check(type(self)._trt_class, name)
        object.__setattr__(self, name, value)


class FakeProgressMonitorBase:
    def __init__(self) -> None:
        pass


class FakeCalibratorBase:
    def __init__(self) -> None:
        pass


class FakeTensorRT:
    """Module-like fake of one TensorRT release."""

    def __init__(self, surface: Dict[str, Any], version: Optional[str] = None,
                 state: Optional[FakeState] = None) -> None:
        self._surface = surface
        self.__version__ = version or surface["version"]
        self.used: set = set()
        self.state = state or FakeState()
        self._classes = {"Logger": FakeLogger, "Builder": FakeBuilder, "OnnxParser": FakeParser,
                         "Runtime": FakeRuntime}

    def check(self, cls: str, attr: str) -> None:
        if attr not in self._surface["classes"].get(cls, ()):
            raise AttributeError(f"tensorrt {self.__version__}: {cls}.{attr} does not exist")
        self.used.add(f"{cls}.{attr}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._surface["module"]:
            raise AttributeError(f"tensorrt {self.__version__} has no attribute {name}")
        self.used.add(name)
        if name in self._surface["enums"]:
            return FakeEnum(self, name)
        if name in self._classes:
            return FakeClass(self, name, self._classes[name])
        if name == "IProgressMonitor":
            return FakeProgressMonitorBase
        if name == "init_libnvinfer_plugins":
            return self._init_plugins
        if name.startswith("IInt8") and name.endswith("Calibrator2"):
            return FakeCalibratorBase
        if name in self._surface["classes"]:  # e.g. trt.IExecutionContext, for attribute probes only
            return FakeClass(self, name, _not_constructible)
        raise AttributeError(f"fake tensorrt implements no {name}")

    def enum(self, enum: str, member: str) -> EnumValue:
        return getattr(getattr(self, enum), member)

    def _init_plugins(self, logger: Any, namespace: str) -> bool:
        """tensorrt.init_libnvinfer_plugins(logger, namespace): registers libnvinfer_plugin's creators."""
        self.state.plugin_inits.append(namespace)
        return True

    def plugin_registered(self, op_type: str, version: str, namespace: str) -> bool:
        """Whether the registry has the creator (onnx-tensorrt FallbackPluginImporter's lookup);
        MultiscaleDeformableAttnPlugin_TRT v1 ships from 8.4.1, v2 from 10.11 (TensorRT CHANGELOG)."""
        from ds2a.trt.deform_attn import PLUGIN_OP, PLUGIN_SINCE
        from ds2a.trt.versions import parse_version

        if op_type != PLUGIN_OP or namespace not in self.state.plugin_inits or version not in PLUGIN_SINCE:
            return False
        return parse_version(self.__version__) >= PLUGIN_SINCE[version]


# --- builder side -------------------------------------------------------------------------------
def FakeLogger(fake: FakeTensorRT, severity: Any = None) -> Any:  # noqa: N802 - mirrors trt.Logger
    logger = _LoggerObj(fake)
    object.__setattr__(logger, "_severity", severity)
    return logger


class _LoggerObj(Checked):
    _trt_class = "Logger"


class FakeTensor(Checked):
    _trt_class = "ITensor"

    def __init__(self, fake: FakeTensorRT, name: str, shape: Tuple[int, ...], dtype: str) -> None:
        super().__init__(fake)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_shape", tuple(shape))
        object.__setattr__(self, "_dtype", dtype)

    name = property(lambda self: self._name)
    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._fake.enum("DataType", self._dtype))


class FakeLayer(Checked):
    _trt_class = "ILayer"

    def __init__(self, fake: FakeTensorRT, name: str, layer_type: str, out: FakeTensor) -> None:
        super().__init__(fake)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_type", layer_type)
        object.__setattr__(self, "_out", out)
        object.__setattr__(self, "_precision", None)
        object.__setattr__(self, "_output_types", {})

    name = property(lambda self: self._name)
    type = property(lambda self: self._fake.enum("LayerType", self._type))
    num_outputs = property(lambda self: 1)

    def get_output(self, i: int) -> FakeTensor:
        return self._out

    @property
    def precision(self) -> Any:
        return self._precision

    @precision.setter
    def precision(self, value: Any) -> None:
        object.__setattr__(self, "_precision", value)

    def set_output_type(self, i: int, dtype: Any) -> None:
        self._output_types[i] = dtype


class FakeNetwork(Checked):
    _trt_class = "INetworkDefinition"

    def __init__(self, fake: FakeTensorRT, flags: int) -> None:
        super().__init__(fake)
        object.__setattr__(self, "_flags", flags)
        object.__setattr__(self, "_inputs", [])
        object.__setattr__(self, "_outputs", [])
        object.__setattr__(self, "_layers", [])
        object.__setattr__(self, "_plugins", [])  # op types imported through the plugin registry

    def _flag_names(self) -> List[str]:
        members = self._fake._surface["enums"]["NetworkDefinitionCreationFlag"]
        return sorted(k for k, v in members.items() if self._flags & (1 << v))

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._layers))

    def get_input(self, i: int) -> FakeTensor:
        return self._inputs[i]

    def get_output(self, i: int) -> FakeTensor:
        return self._outputs[i]

    def get_layer(self, i: int) -> FakeLayer:
        return self._layers[i]


class FakeParserError(Checked):
    _trt_class = "ParserError"

    def __init__(self, fake: FakeTensorRT, node: int, desc: str) -> None:
        super().__init__(fake)
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_desc", desc)

    def node(self) -> int:
        return self._node

    def desc(self) -> str:
        return self._desc


def _dims(vi: Any) -> Tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)


class _Parser(Checked):
    _trt_class = "OnnxParser"

    def __init__(self, fake: FakeTensorRT, network: FakeNetwork) -> None:
        super().__init__(fake)
        object.__setattr__(self, "_network", network)
        object.__setattr__(self, "_errors", [])

    def parse(self, model: bytes, path: Optional[str] = None) -> bool:
        import onnx

        proto = onnx.load_from_string(bytes(model))
        net, fake = self._network, self._fake
        inits = {t.name for t in proto.graph.initializer}
        for vi in proto.graph.input:
            if vi.name not in inits:
                net._inputs.append(FakeTensor(fake, vi.name, _dims(vi), ONNX_TYPES[vi.type.tensor_type.elem_type]))
        for vi in proto.graph.output:
            net._outputs.append(FakeTensor(fake, vi.name, _dims(vi), ONNX_TYPES[vi.type.tensor_type.elem_type]))
        for i, node in enumerate(proto.graph.node):
            if node.domain not in ("", "ai.onnx"):  # ModelImporter: no importer -> plugin registry lookup
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                version = attrs.get("plugin_version", b"1").decode()
                namespace = attrs.get("plugin_namespace", b"").decode()
                if not fake.plugin_registered(node.op_type, version, namespace):
                    self._errors.append(FakeParserError(fake, i, "Plugin not found, are the plugin name, "
                                                                 "version, and namespace correct?"))
                    continue
                net._plugins.append(node.op_type)
            out = FakeTensor(fake, node.output[0], (), "FLOAT")
            net._layers.append(FakeLayer(fake, node.name or f"n{i}", LAYER_OF_OP.get(node.op_type, "ELEMENTWISE"), out))
        for idx, desc in fake.state.parse_errors.items():
            self._errors.append(FakeParserError(fake, idx, desc))
        return not self._errors

    num_errors = property(lambda self: len(self._errors))

    def set_flag(self, flag: EnumValue) -> None:
        self._fake.state.parser_flags.append(flag.name)

    def get_error(self, i: int) -> FakeParserError:
        return self._errors[i]


def FakeParser(fake: FakeTensorRT, network: FakeNetwork, logger: Any) -> _Parser:  # noqa: N802
    return _Parser(fake, network)


class FakeTimingCache(Checked):
    _trt_class = "ITimingCache"

    def __init__(self, fake: FakeTensorRT, data: bytes) -> None:
        super().__init__(fake)
        object.__setattr__(self, "_data", bytes(data))

    def serialize(self) -> bytes:
        return self._data


class FakeProfile(Checked):
    _trt_class = "IOptimizationProfile"

    def __init__(self, fake: FakeTensorRT) -> None:
        super().__init__(fake)
        object.__setattr__(self, "_shapes", {})

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        self._shapes[name] = (tuple(min), tuple(opt), tuple(max))


class FakeConfig(Checked):
    _trt_class = "IBuilderConfig"

    def __init__(self, fake: FakeTensorRT) -> None:
        super().__init__(fake)
        for k, v in {"_flags": set(), "_pools": {}, "_profiles": [], "_cache": None}.items():
            object.__setattr__(self, k, v)

    def set_flag(self, flag: EnumValue) -> None:
        self._flags.add(flag.name)

    def set_memory_pool_limit(self, pool: EnumValue, size: int) -> None:
        self._pools[pool.name] = size

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def _cache_header(self) -> bytes:
        """A real timing cache names the TensorRT release and device that measured it."""
        gpu = self._fake.state.cuda.info.name if self._fake.state.cuda else ""
        return CACHE_MAGIC + f"{self._fake.__version__} {gpu}\n".encode()

    def create_timing_cache(self, data: bytes) -> Optional[FakeTimingCache]:
        self._fake.state.timing_cache_loaded.append(bytes(data))
        if data and not bytes(data).startswith(CACHE_MAGIC):
            return None  # corrupt: TensorRT logs a deserialization error and returns no cache
        return FakeTimingCache(self._fake, bytes(data) or self._cache_header())

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        if not ignore_mismatch and not cache._data.startswith(self._cache_header()):
            return False  # measured by another release or device: refused, the config keeps no cache
        object.__setattr__(self, "_cache", cache)
        return True

    def get_timing_cache(self) -> FakeTimingCache:
        return self._cache


class _Builder(Checked):
    _trt_class = "Builder"

    def create_network(self, flags: int = 0) -> FakeNetwork:
        return FakeNetwork(self._fake, flags)

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig(self._fake)

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile(self._fake)

    num_DLA_cores = property(lambda self: self._fake.state.num_dla_cores)

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> Optional[bytes]:
        fake = self._fake
        attrs = {k: object.__getattribute__(config, k) for k in config.__dict__ if not k.startswith("_")}
        record = {
            "network_flags": network._flag_names(), "config_flags": sorted(config._flags),
            "pools": dict(config._pools), "attrs": attrs,
            "profiles": [dict(p._shapes) for p in config._profiles],
            "pinned": [layer.name for layer in network._layers if layer._precision is not None],
        }
        fake.state.builds.append(record)
        if fake.state.build_fails:
            return None
        if fake.state.build_empty:
            return b""
        if config._cache is not None:  # a build adds its measurements to the cache
            entry = f"[build {len(fake.state.builds)}]".encode()
            object.__setattr__(config._cache, "_data", config._cache._data + entry)
        profile = config._profiles[0]._shapes if config._profiles else {}
        io = []
        for t, mode in [(t, "INPUT") for t in network._inputs] + [(t, "OUTPUT") for t in network._outputs]:
            io.append({"name": t.name, "shape": list(t.shape), "dtype": t._dtype, "mode": mode,
                       "profile": [list(s) for s in profile.get(t.name, ())]})
        return MAGIC + json.dumps({"version": fake.__version__, "io": io, "plugins": network._plugins}).encode()


def FakeBuilder(fake: FakeTensorRT, logger: Any) -> _Builder:  # noqa: N802
    return _Builder(fake)


# --- runtime side ---------------------------------------------------------------------------
class FakeEngine(Checked):
    _trt_class = "ICudaEngine"

    def __init__(self, fake: FakeTensorRT, io: List[Dict[str, Any]]) -> None:
        super().__init__(fake)
        object.__setattr__(self, "_io", {t["name"]: t for t in io})
        object.__setattr__(self, "_order", [t["name"] for t in io])

    num_io_tensors = property(lambda self: len(self._order))

    def get_tensor_name(self, i: int) -> str:
        return self._order[i]

    def get_tensor_mode(self, name: str) -> EnumValue:
        return self._fake.enum("TensorIOMode", self._io[name]["mode"])

    def get_tensor_dtype(self, name: str) -> EnumValue:
        return self._fake.enum("DataType", self._io[name]["dtype"])

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self._io[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> List[Tuple[int, ...]]:
        return [tuple(s) for s in self._io[name]["profile"]]

    def create_execution_context(self) -> "FakeContext":
        return FakeContext(self._fake, self)


class FakeContext(Checked):
    """Executes a fixed rule on FakeCuda memory: class = blue channel // 64, logits one-hot-ish."""

    _trt_class = "IExecutionContext"

    def __init__(self, fake: FakeTensorRT, engine: FakeEngine) -> None:
        super().__init__(fake)
        object.__setattr__(self, "_engine", engine)
        object.__setattr__(self, "_addr", {})
        object.__setattr__(self, "_in_shape", {})

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self._addr[name] = ptr
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self._in_shape[name] = tuple(shape)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        cuda = self._fake.state.cuda
        cuda.enqueue(self._execute)
        return True

    def _execute(self) -> None:
        self._fake.state.executions += 1
        cuda, io = self._fake.state.cuda, self._engine._io
        inp = next(t for t in io.values() if t["mode"] == "INPUT")
        shape = self._in_shape.get(inp["name"], tuple(inp["shape"]))
        x = cuda.view(self._addr[inp["name"]], shape, NP[inp["dtype"]])
        blue = x[..., 0] if inp["dtype"] == "UINT8" else np.zeros((shape[0],) + tuple(shape[2:]), np.float32)
        n = shape[0]
        logits_t = io.get("logits")
        k = logits_t["shape"][1] if logits_t else 4
        cls = (blue.astype(np.int64) // 64) % k
        if "class_map" in io:
            cuda.view(self._addr["class_map"], cls.shape, np.uint8)[...] = cls
        if logits_t:
            lg = np.stack([(cls == c).astype(np.float32) for c in range(k)], axis=1)
            cuda.view(self._addr["logits"], (n,) + lg.shape[1:], np.float32)[...] = lg


class _Runtime(Checked):
    _trt_class = "Runtime"

    def __init__(self, fake: FakeTensorRT) -> None:
        super().__init__(fake)

    def deserialize_cuda_engine(self, data: bytes) -> Optional[FakeEngine]:
        data = bytes(data)
        if not data.startswith(MAGIC):
            return None
        try:
            plan = json.loads(data[len(MAGIC):])
        except ValueError:
            return None  # truncated
        if plan.get("plugins") and not self._fake.state.plugin_inits:
            return None  # a plugin layer's creator is looked up at deserialization
        host_code = self.__dict__.get("engine_host_code_allowed", False)
        if plan["version"] != self._fake.__version__ and not host_code:
            return None  # a standard engine only loads in the release that built it
        return FakeEngine(self._fake, plan["io"])


def FakeRuntime(fake: FakeTensorRT, logger: Any) -> _Runtime:  # noqa: N802
    return _Runtime(fake)


# --- CUDA -----------------------------------------------------------------------------------
class FakeCuda:
    """The cuda_buffers API over numpy memory; work is queued per stream and run on synchronize."""

    name = "fake-cuda"
    supports_graphs = True

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """One GPU, no per-thread state in this fake (tests/cuda_fakes.py models that)."""
        yield

    def __init__(self, gpu_name: str = "NVIDIA Orin", cc: Tuple[int, int] = (8, 7)) -> None:
        from ds2a.runtime.cuda_buffers import DeviceInfo

        self.info = DeviceInfo(0, gpu_name, cc, 8 << 30)
        self.mem: Dict[int, np.ndarray] = {}
        self._ids = itertools.count(4096, 4096)
        self.queue: List[Callable[[], None]] = []
        self.capturing: Optional[List[Callable[[], None]]] = None
        self.graph_launches = 0
        self.freed = 0

    def device_info(self) -> Any:
        return self.info

    def alloc_host(self, shape: Any, dtype: Any) -> Tuple[np.ndarray, int]:
        arr = np.zeros(shape, dtype)
        return arr, arr.ctypes.data

    def free_host(self, ptr: int) -> None:
        pass

    def alloc_device(self, nbytes: int) -> int:
        ptr = next(self._ids)
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def free_device(self, ptr: int) -> None:
        del self.mem[ptr]
        self.freed += 1

    def view(self, ptr: int, shape: Any, dtype: Any) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.mem[ptr][:n].view(dtype).reshape(shape)

    def enqueue(self, op: Callable[[], None]) -> None:
        (self.capturing if self.capturing is not None else self.queue).append(op)

    def copy_h2d(self, dst: int, host: np.ndarray, nbytes: int, stream: Any) -> None:
        def op() -> None:
            self.mem[dst][:nbytes] = host.reshape(-1).view(np.uint8)[:nbytes]
        self.enqueue(op)

    def copy_d2h(self, host: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        def op() -> None:
            host.reshape(-1).view(np.uint8)[:nbytes] = self.mem[src][:nbytes]
        self.enqueue(op)

    def create_stream(self) -> str:
        return "stream"

    def stream_handle(self, stream: Any) -> int:
        return 1234

    def synchronize(self, stream: Any) -> None:
        ops, self.queue = self.queue, []
        for op in ops:
            op()

    def destroy_stream(self, stream: Any) -> None:
        pass

    def create_event(self) -> str:
        return "event"

    def record_event(self, event: Any, stream: Any) -> None:
        pass

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return 0.5

    def destroy_event(self, event: Any) -> None:
        pass

    def begin_capture(self, stream: Any) -> None:
        self.capturing = []

    def end_capture(self, stream: Any) -> List[Callable[[], None]]:
        graph, self.capturing = self.capturing, None
        return graph

    def launch_graph(self, graph: List[Callable[[], None]], stream: Any) -> None:
        self.graph_launches += 1
        self.queue.extend(graph)

    def destroy_graph(self, graph: Any) -> None:
        pass
