"""numpy arrays and torch tensors in, the same kind out.

The extension module works on numpy arrays. A CPU torch tensor is passed as a numpy view of its
memory (no copy) and results come back as torch tensors sharing the result's memory; a CUDA
tensor goes to the device path (kvq._kvq's DLPack functions) when the backend is 'cuda'.
"""
import numpy as np


def _torch():
    import sys
    return sys.modules.get("torch")  # only when the caller already imported torch


def is_torch(x):
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def is_cuda_tensor(x):
    return is_torch(x) and x.device.type == "cuda"


def to_host(x, what):
    """(numpy array, was_torch). CUDA tensors are an error naming `what` (use backend='cuda')."""
    if x is None:
        return None, False
    if is_torch(x):
        if x.device.type != "cpu":
            raise _error(f"{what}: a {x.device.type} tensor; the host backends read CPU "
                         "tensors (x.cpu()), the cuda backend reads CUDA tensors")
        return x.detach().contiguous().numpy(), True
    return x, False


def back(result, was_torch):
    """Wraps a numpy result as a torch tensor when the input was one (shares memory)."""
    if not was_torch or not isinstance(result, np.ndarray):
        return result
    return _torch().from_numpy(result)


def _error(message):
    from . import _kvq
    return _kvq.Error(message)
