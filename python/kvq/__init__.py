"""kvq in Python: the bit-exact KV-cache quantization reference, its backends and methods.

Every op takes numpy arrays or torch tensors (CPU; CUDA tensors with backend='cuda') and
`backend` ('ref', 'avx512', 'avx2', 'cuda'; backends() says which run here and why not).
Inputs must already be float32 (float16 where an op widens it): kvq never rounds silently.
kvq's errors raise kvq.Error (a ValueError) with the message the CLI prints.

    import numpy as np, kvq
    k = np.random.default_rng(0).standard_normal((64, 8, 128), dtype=np.float32)
    q = kvq.quantize(k.reshape(64, -1), bits=2, group=128)     # kvq.Quantized
    k2 = kvq.dequantize(q, backend="avx2")                     # bit-equal to backend="ref"

Submodules: kvq.hf (a transformers cache through any method), kvq.ppl (`python -m kvq.ppl`,
perplexity of an HF causal LM per method), kvq.llama2c (llama2.c checkpoint -> HF Llama).
"""
from . import _kvq
from ._arrays import back, is_cuda_tensor, to_host
from ._kvq import (AppliedLayer, AppliedTensor, Calibration, DecodeCache, Error,
                   IncrementalCache, MethodParams, Quantized)

__all__ = ["Error", "Quantized", "DecodeCache", "MethodParams", "Calibration", "AppliedLayer",
           "AppliedTensor", "IncrementalCache", "backends", "available_backends", "fwht",
           "reorder", "rotate_k", "rotate_v", "quantize", "dequantize", "rotate_quantize",
           "token_absmax", "attention_decode", "attention_decode_oracle", "calibrate",
           "apply_method", "apply", "METHODS"]

METHODS = ("fp32", "rtn", "kivi", "kvquant", "rotatekv", "kvsink+kvquant", "akvq-vl")


def backends():
    """Every backend compiled in, ref first: [{'name', 'available', 'detail'}], detail being the
    features found or why the backend is not available (not built, no CPU support, no GPU)."""
    return _kvq.backends()


def available_backends():
    """Names of the backends that run on this machine."""
    return [b["name"] for b in _kvq.backends() if b["available"]]


def _device_op(name, backend, x):
    """The DLPack device function for a CUDA tensor, or kvq.Error saying why there is none."""
    if backend != "cuda":
        raise Error(f"{name}: a CUDA tensor needs backend='cuda' (got '{backend}'); "
                    "move it with .cpu() for the host backends")
    from . import _cuda
    return getattr(_cuda, name)


def fwht(x, n, backend="ref"):
    """Normalized fast Walsh-Hadamard transform (docs/spec.md §1) of every block of n values of x
    (float32, size a multiple of n, n a power of two up to 32768). Returns a new array."""
    if is_cuda_tensor(x):
        return _device_op("fwht", backend, x)(x, n)
    a, t = to_host(x, "fwht x")
    return back(_kvq.fwht(a, n, backend), t)


def reorder(x, perm, backend="ref"):
    """out[t, j] = x[t, perm[j]] over rows of len(perm) channels (perm int32)."""
    a, t = to_host(x, "reorder x")
    p, _ = to_host(perm, "reorder perm")
    return back(_kvq.reorder(a, p, backend), t)


def rotate_k(k_pre_rope, head_group=4, perm=None, backend="ref"):
    """RotateKV's key rotation (docs/spec.md §2) of pre-RoPE keys [T, H, d]: FWHT over each group of
    head_group heads (g*d a power of two), then the channel reorder perm (int32 [H*d])."""
    if is_cuda_tensor(k_pre_rope):
        return _device_op("rotate_k", backend, k_pre_rope)(k_pre_rope, head_group, perm)
    a, t = to_host(k_pre_rope, "rotate_k k_pre_rope")
    p, _ = to_host(perm, "rotate_k perm")
    return back(_kvq.rotate_k(a, head_group, p, backend), t)


def rotate_v(v, backend="ref"):
    """Per-head FWHT of values [T, H, d] (docs/spec.md §2); self-inverse."""
    if is_cuda_tensor(v):
        return _device_op("rotate_v", backend, v)(v)
    a, t = to_host(v, "rotate_v v")
    return back(_kvq.rotate_v(a, backend), t)


def quantize(x, bits, group=128, axis="token", clip=1.0, zero_point="float", backend="ref"):
    """Asymmetric uniform quantization with packing (docs/spec.md §3) of float32 x [rows, cols]:
    groups of `group` channels of a row (axis 'token') or rows of a column (axis 'channel'),
    codes clipped by `clip`, fp16 scale and zero ('float') or uint8 zero ('int') per group.
    Returns a kvq.Quantized (codes, scale, zero, zero_int as numpy arrays)."""
    if is_cuda_tensor(x):
        return _device_op("quantize", backend, x)(x, bits, group, axis, clip, zero_point)
    a, _ = to_host(x, "quantize x")
    return _kvq.quantize(a, bits, group, axis, clip, zero_point, backend)


def dequantize(q, backend="ref"):
    """float32 [rows, cols] reconstruction of a kvq.Quantized (numpy), or of the
    kvq._kvq.cuda.DeviceQuantized that quantize / rotate_quantize return for CUDA tensors (a
    CUDA tensor; DeviceQuantized.to_host() gives the kvq.Quantized)."""
    if not isinstance(q, Quantized):
        return _device_op("dequantize", backend, q)(q)
    return _kvq.dequantize(q, backend)


def rotate_quantize(kv, rotation="key_grouped", head_group=4, perm=None, bits=2, group=128,
                    axis="token", clip=1.0, zero_point="float", backend="ref"):
    """The fused append path: rotate K/V rows kv [T, H, d] (float32 or float16; 'key_grouped' =
    rotate_k, 'per_head' = per-head FWHT, 'none') and quantize + pack them as [T, H*d].
    Bit for bit quantize(rotate(kv)) of the reference on every backend."""
    if is_cuda_tensor(kv):
        return _device_op("rotate_quantize", backend, kv)(
            kv, rotation, head_group, perm, bits, group, axis, clip, zero_point)
    a, _ = to_host(kv, "rotate_quantize kv")
    p, _ = to_host(perm, "rotate_quantize perm")
    return _kvq.rotate_quantize(a, rotation, head_group, p, bits, group, axis, clip, zero_point,
                                backend)


def token_absmax(hidden, backend="ref"):
    """(absmax [T], argmax [T] int32) of hidden [T, hidden]: each row's max |h| and its lowest
    channel (docs/spec.md §4)."""
    a, t = to_host(hidden, "token_absmax hidden")
    absmax, argmax = _kvq.token_absmax(a, backend)
    return back(absmax, t), back(argmax, t)


def attention_decode(q, cache, backend="ref"):
    """Decode attention (docs/spec.md §7, a tolerance op) of the newest position's post-RoPE query
    q [q_heads, d] over a kvq.DecodeCache (e.g. apply_method(...).cache)."""
    a, t = to_host(q, "attention_decode q")
    return back(_kvq.attention_decode(a, cache, backend), t)


def attention_decode_oracle(q, cache):
    """attention_decode's fp64 oracle over the same reconstructed K and V (float64)."""
    a, t = to_host(q, "attention_decode_oracle q")
    return back(_kvq.attention_decode_oracle(a, cache), t)


def _layer_arrays(layer, index):
    out = {}
    for name, x in layer.items():
        out[name], _ = to_host(x, f"layers.{index}.{name}")
    return out


def _params(method, bits, params):
    return method if isinstance(method, MethodParams) else MethodParams(method, bits, **params)


def calibrate(layers, method, bits=2, **params):
    """Recording-level calibration of a method (rotatekv permutations, KVSink l*/C*/median)
    over every layer. layers: a list of dicts of float32 arrays named as in a kvq recording:
    k, k_pre_rope, v [T, H_kv, d], hidden_in [T, hidden], q [T, H_q, d], modality uint8 [T]."""
    arrays = [_layer_arrays(layer, i) for i, layer in enumerate(layers)]
    return _kvq.calibrate(arrays, _params(method, bits, params))


def apply_method(layer, index, layers, calibration, method, bits=2, **params):
    """Whole-layer apply (docs/spec.md §8) of layer `index` of `layers`: a kvq.AppliedLayer with
    k / v (parts, kept, outliers, storage), k_dequant() / v_dequant() and .cache."""
    return _kvq.apply_method(_layer_arrays(layer, index), index, layers, calibration,
                             _params(method, bits, params))


def apply(layers, method, bits=2, **params):
    """What `kvq apply` computes on a recording: calibrate over every layer, then apply the
    method to each. Returns (list of kvq.AppliedLayer, kvq.Calibration). Method parameters as
    kvq.MethodParams' attributes (group, window, clip, zero_point, head_group, rope_theta, ...)."""
    arrays = [_layer_arrays(layer, i) for i, layer in enumerate(layers)]
    return _kvq.apply(arrays, _params(method, bits, params))
