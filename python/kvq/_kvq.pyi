"""Type stubs of the extension module kvq._kvq (python/src/*.cpp)."""
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F16 = npt.NDArray[np.float16]
I32 = npt.NDArray[np.int32]
U8 = npt.NDArray[np.uint8]
Axis = Literal["token", "channel"]
ZeroPoint = Literal["float", "int"]

cuda_built: bool

class Error(ValueError): ...

def backends() -> list[dict[str, Any]]: ...

class Quantized:
    def __init__(self, rows: int, cols: int, bits: int, group: int, axis: Axis = ...,
                 clip: float = ..., zero_point: ZeroPoint = ..., *, codes: U8, scale: F16,
                 zero: F16 | None = ..., zero_int: U8 | None = ...) -> None: ...
    rows: int
    cols: int
    bits: int
    group: int
    axis: Axis
    clip: float
    zero_point: ZeroPoint
    codes: U8
    scale: F16
    zero: F16
    zero_int: U8
    def unpacked(self) -> U8: ...

class DecodeCache:
    def __init__(self, k: Quantized, v: Quantized, heads: int, head_dim: int,
                 k_rotation: Literal["none", "grouped", "per_head"] = ..., head_group: int = ...,
                 perm: I32 | None = ..., v_hadamard: bool = ..., k_pre_rope: bool = ...,
                 rope_theta: float = ..., kept: U8 | None = ..., k_fp16: F16 | None = ...,
                 v_fp16: F16 | None = ...) -> None: ...
    tokens: int
    heads: int
    head_dim: int
    k_rotation: str
    k_pre_rope: bool
    def keys(self) -> F32: ...
    def values(self) -> F32: ...

def fwht(x: F32, n: int, backend: str = ...) -> F32: ...
def reorder(x: F32, perm: I32, backend: str = ...) -> F32: ...
def rotate_k(k_pre_rope: F32, head_group: int = ..., perm: I32 | None = ...,
             backend: str = ...) -> F32: ...
def rotate_v(v: F32, backend: str = ...) -> F32: ...
def quantize(x: F32, bits: int, group: int = ..., axis: Axis = ..., clip: float = ...,
             zero_point: ZeroPoint = ..., backend: str = ...) -> Quantized: ...
def dequantize(q: Quantized, backend: str = ...) -> F32: ...
def rotate_quantize(kv: F32 | F16, rotation: Literal["key_grouped", "per_head", "none"] = ...,
                    head_group: int = ..., perm: I32 | None = ..., bits: int = ...,
                    group: int = ..., axis: Axis = ..., clip: float = ...,
                    zero_point: ZeroPoint = ..., backend: str = ...) -> Quantized: ...
def token_absmax(hidden: F32, backend: str = ...) -> tuple[F32, I32]: ...
def attention_decode(q: F32, cache: DecodeCache, backend: str = ...) -> F32: ...
def attention_decode_oracle(q: F32, cache: DecodeCache) -> npt.NDArray[np.float64]: ...

class MethodParams:
    def __init__(self, method: str, bits: int = ..., **params: Any) -> None: ...
    method: str
    bits: int
    group: int
    window: int
    clip: float
    zero_point: ZeroPoint
    head_group: int
    outlier_fraction: float
    first_tokens: int
    calibration_fraction: float
    rope_theta: float
    bits_hi: int
    pivot_top_k: int
    kvsink_tau_k: float
    uses_pre_rope_k: bool

class Calibration:
    k_perm: list[list[int]]
    pivots: list[list[int]]
    kvsink_layer: int
    kvsink_channels: list[int]
    kvsink_median: float
    kvsink_sinks: list[int]
    perm_calibration_tokens: int

class AppliedTensor:
    parts: list[tuple[I32, Quantized]]
    kept: I32
    kept_values: F16
    outlier_index: I32
    outlier_value: F16
    storage: dict[str, float]

class AppliedLayer:
    k: AppliedTensor
    v: AppliedTensor
    cache: DecodeCache
    def k_dequant(self) -> F32: ...
    def v_dequant(self) -> F32: ...

Layer = dict[str, Any]

def calibrate(layers: list[Layer], params: MethodParams) -> Calibration: ...
def apply_method(layer: Layer, index: int, layers: int, calibration: Calibration,
                 params: MethodParams) -> AppliedLayer: ...
def apply(layers: list[Layer], params: MethodParams) -> tuple[list[AppliedLayer], Calibration]: ...

class IncrementalCache:
    def __init__(self, params: MethodParams, kv_heads: int, head_dim: int, layer: int,
                 layers: int, k_perm: I32 | list[int] | None = ...,
                 calibration: Calibration | None = ...) -> None: ...
    def append(self, k: F32 | None = ..., v: F32 = ..., k_pre_rope: F32 | None = ...,
               hidden_in: F32 | None = ..., position: int = ..., modality: int = ...,
               sink: int = ...) -> None: ...
    def __len__(self) -> int: ...
    def keys(self, start: int = ...) -> F32: ...
    def values(self, start: int = ...) -> F32: ...
    def kept(self, token: int) -> bool: ...
    def k_storage(self) -> dict[str, float]: ...
    def v_storage(self) -> dict[str, float]: ...

class Store:
    def __init__(self, path: str) -> None: ...
    def begin_run(self, command: str) -> int: ...
    def add_case(self, run: int, name: str, op: str, params_json: str, repro: str,
                 measurements: list[tuple[str, str, float, str]]) -> int: ...
    def finish_run(self, run: int, status: str) -> None: ...

class _CudaModule:
    """kvq._kvq.cuda (present when cuda_built): device-resident ops through DLPack."""
    class DeviceArray:
        shape: list[int]
        def __dlpack__(self, stream: int | None = ...) -> Any: ...
        def __dlpack_device__(self) -> tuple[int, int]: ...
    class DeviceQuantized:
        rows: int
        cols: int
        codes: "_CudaModule.DeviceArray"
        scale: "_CudaModule.DeviceArray"
        zero: "_CudaModule.DeviceArray"
        zero_int: "_CudaModule.DeviceArray"
        def to_host(self) -> Quantized: ...
    @staticmethod
    def fwht(x: Any, n: int) -> "_CudaModule.DeviceArray": ...
    @staticmethod
    def rotate_k(k_pre_rope: Any, head_group: int, perm: Any) -> "_CudaModule.DeviceArray": ...
    @staticmethod
    def rotate_v(v: Any) -> "_CudaModule.DeviceArray": ...
    @staticmethod
    def quantize(x: Any, bits: int, group: int, axis: Axis, clip: float,
                 zero_point: ZeroPoint) -> "_CudaModule.DeviceQuantized": ...
    @staticmethod
    def dequantize(q: "_CudaModule.DeviceQuantized") -> "_CudaModule.DeviceArray": ...
    @staticmethod
    def rotate_quantize(kv: Any, rotation: str, head_group: int, perm: Any, bits: int,
                        group: int, axis: Axis, clip: float,
                        zero_point: ZeroPoint) -> "_CudaModule.DeviceQuantized": ...

cuda: _CudaModule

class Llama2Tokenizer:
    def __init__(self, path: str) -> None: ...
    vocab_size: int
    def encode(self, text: str) -> list[int]: ...

def read_text_file(path: str) -> str: ...
