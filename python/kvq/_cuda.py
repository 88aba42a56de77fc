"""CUDA tensors with backend='cuda': kvq._kvq.cuda's DLPack functions, results as torch CUDA
tensors (torch.from_dlpack, no copy) and kvq._kvq.cuda.DeviceQuantized. The input's finiteness
(docs/spec.md §0) is checked here on the device, with the reference's message; the one value read
back is the index of a bad element."""
import torch

from . import _kvq


def _device():
    if not getattr(_kvq, "cuda_built", False):
        raise _kvq.Error("backend 'cuda' is not available: not built: nvcc was not found at "
                         "configure time")
    entry = next(b for b in _kvq.backends() if b["name"] == "cuda")
    if not entry["available"]:
        raise _kvq.Error(f"backend 'cuda' is not available: {entry['detail']}")
    return _kvq.cuda


def _finite(x, what):
    bad = ~torch.isfinite(x.reshape(-1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        value = float(x.reshape(-1)[i])
        raise _kvq.Error(f"{what}: non-finite value {value:f} at index {i}")


def fwht(x, n):
    return torch.from_dlpack(_device().fwht(x.contiguous(), n))


def rotate_k(k_pre_rope, head_group, perm):
    cuda = _device()
    k = k_pre_rope.contiguous()
    _finite(k, "rotate_k input")
    if isinstance(perm, torch.Tensor):
        perm = perm.detach().cpu().numpy()
    return torch.from_dlpack(cuda.rotate_k(k, head_group, perm))


def rotate_v(v):
    cuda = _device()
    v = v.contiguous()
    _finite(v, "rotate_v input")
    return torch.from_dlpack(cuda.rotate_v(v))


def quantize(x, bits, group, axis, clip, zero_point):
    cuda = _device()
    x = x.contiguous()
    _finite(x, "x")
    return cuda.quantize(x, bits, group, axis, clip, zero_point)


def dequantize(q):
    return torch.from_dlpack(_device().dequantize(q))


def rotate_quantize(kv, rotation, head_group, perm, bits, group, axis, clip, zero_point):
    cuda = _device()
    kv = kv.contiguous()
    _finite(kv, "rotate_quantize input")
    if isinstance(perm, torch.Tensor):
        perm = perm.detach().cpu().numpy()
    return cuda.rotate_quantize(kv, rotation, head_group, perm, bits, group, axis, clip,
                                zero_point)
