"""A transformers cache that passes every layer's new K/V through a kvq method.

    cache = kvq.hf.KvqCache(model, "rotatekv", bits=2, calibration=kvq.hf.calibrate(model, ids,
                            "rotatekv", 2))
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)

KvqCache is a transformers `Cache` whose layers are `DynamicLayer`s: each update() appends the
new tokens to one kvq.IncrementalCache per (layer, sequence) (reference/methods.h, the cache of
`kvq ppl`, docs/spec.md §9) and returns the dequantized K and V it reconstructs, so attention reads
what the method stores, token by token as it arrives.

What the methods read, taken as tools/record_hf.py takes it:
  - post-RoPE K (rtn, kivi, akvq-vl): the key_states the attention passes to update();
  - pre-RoPE K (kvquant, kvsink+kvquant, rotatekv): the key entering the model's own
    apply_rotary_pos_emb (wrapped), checked to be the same call whose output reached update();
    kvq appends it at position 0 (kvq's RoPE is then the identity) and the reconstruction gets
    the model's RoPE (its own cos/sin for each position), so any rope scaling is the model's;
  - hidden_in (rotatekv's online pivots, KVSink at l*): the residual stream entering the layer.
Within each head, K and V enter kvq in kvq's channel order (RoPE pairs (2j, 2j+1), permuted from
the model's (j, j + d/2) as record_hf.py's default), so a recording and this cache quantize the
same groups; results are permuted back.

Methods run on the reference ('ref', bit-exact; `kvq ppl` also only has the reference's
incremental cache). Models: decoder layers at model.base_model.layers with self_attn and the
rotate_half RoPE of Llama-family modules (Llama, Mistral, Mixtral, Qwen2/3, Qwen3-MoE).
"""
import sys

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from . import _kvq

__all__ = ["KvqCache", "calibrate", "record", "Hooks"]


def _kvq_order(d, device=None):
    """Index that reorders a head's channels from the model's (j, j + d/2) to kvq's (2j, 2j+1)."""
    half = d // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], 1).reshape(-1).to(device)


class Hooks:
    """The model's activations a method needs, per layer, from its latest forward: hidden_in
    (decoder layer pre-hook) and (k_pre_rope, k_post_rope) from the wrapped
    apply_rotary_pos_emb of the attention module's own Python module. Installed once per model
    (Hooks.of(model)); harmless when no KvqCache reads them."""

    def __init__(self, model):
        base = getattr(model, "base_model", model)
        layers = getattr(base, "layers", None)
        if layers is None or len(layers) == 0:
            raise _kvq.Error(f"{type(model).__name__} has no base_model.layers (decoder layers)")
        self.layers = list(layers)
        attention = [getattr(layer, "self_attn", None) for layer in self.layers]
        if any(a is None for a in attention):
            raise _kvq.Error(f"{type(model).__name__}: a decoder layer has no self_attn")
        module = sys.modules.get(type(attention[0]).__module__)
        if module is None or not callable(getattr(module, "apply_rotary_pos_emb", None)):
            raise _kvq.Error(f"{type(attention[0]).__name__}'s module has no "
                             "apply_rotary_pos_emb (pre-RoPE keys are taken there)")
        self.module = module
        self.original_rope = module.apply_rotary_pos_emb
        self.current = None
        self.hidden = {}
        self.pre_rope = {}
        self.handles = []
        for i, (layer, attn) in enumerate(zip(self.layers, attention)):
            self.handles.append(layer.register_forward_pre_hook(self._hidden_hook(i),
                                                                with_kwargs=True))
            self.handles.append(attn.register_forward_pre_hook(self._enter_hook(i)))
        module.apply_rotary_pos_emb = self._rope

    @staticmethod
    def of(model):
        hooks = getattr(model, "_kvq_hooks", None)
        if hooks is None:
            hooks = Hooks(model)
            model._kvq_hooks = hooks
        return hooks

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        self.module.apply_rotary_pos_emb = self.original_rope

    def _hidden_hook(self, i):
        def hook(module, args, kwargs):
            self.hidden[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def _enter_hook(self, i):
        def hook(module, args):
            self.current = i
        return hook

    def _rope(self, q, k, cos, sin, *args, **kwargs):
        q_out, k_out = self.original_rope(q, k, cos, sin, *args, **kwargs)
        if self.current is not None:
            self.pre_rope[self.current] = (k, k_out, q_out)
        return q_out, k_out

    def rope(self, k, cos, sin):
        """The model's own RoPE of k [B, H, T, d] with cos / sin [B, T, d]."""
        return self.original_rope(k, k, cos, sin)[1]

    def take_pre_rope(self, layer, key_states):
        """The pre-RoPE key whose RoPE is key_states, or kvq.Error when the model's attention
        did not go through the wrapped apply_rotary_pos_emb for this update."""
        k, k_out, _ = self.pre_rope.pop(layer, (None, None, None))
        if k_out is not key_states:
            raise _kvq.Error(f"layer {layer}: the key given to the cache is not the output of "
                             f"{self.module.__name__}.apply_rotary_pos_emb; pre-RoPE methods "
                             "need the rotate_half RoPE of Llama-family attention")
        return k


def _rows(x, order):
    """[B, H, T, d] (any dtype/device) -> float32 numpy [B, T, H*d] in kvq's channel order."""
    b, h, t, d = x.shape
    x = x.detach().to("cpu", torch.float32)[..., order]
    return x.transpose(1, 2).reshape(b, t, h * d).contiguous().numpy()


class KvqLayer(DynamicLayer):
    """One decoder layer's cache: a kvq.IncrementalCache per sequence of the batch; keys /
    values hold the reconstruction attention reads ([B, H, T, d], the model's dtype)."""

    def __init__(self, owner, index):
        super().__init__()
        self.owner = owner
        self.index = index

    def lazy_initialization(self, key_states):
        super().lazy_initialization(key_states)
        o = self.owner
        b, h, _, d = key_states.shape
        perm = o.calibration.k_perm[self.index] if len(o.calibration.k_perm) > self.index else None
        self.caches = [_kvq.IncrementalCache(o.params, h, d, self.index, o.num_layers,
                                             k_perm=perm, calibration=o.calibration)
                       for _ in range(b)]
        self.order = _kvq_order(d)
        self.inverse = torch.argsort(self.order)
        self.cos = self.sin = None

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        o = self.owner
        batch, heads, new, d = key_states.shape
        pre = o.params.uses_pre_rope_k
        k_in = o.hooks.take_pre_rope(self.index, key_states) if pre else key_states
        k_rows, v_rows = _rows(k_in, self.order), _rows(value_states, self.order)
        hidden = None
        if o.needs_hidden:
            hidden = o.hooks.hidden.get(self.index)
            hidden = hidden.detach().to("cpu", torch.float32).numpy()
        if pre:
            if cache_kwargs is None or "cos" not in cache_kwargs:
                raise _kvq.Error(f"layer {self.index}: the attention passed no cos/sin to the "
                                 "cache; pre-RoPE methods re-apply the model's RoPE")
            cos, sin = cache_kwargs["cos"], cache_kwargs["sin"]
            self.cos = cos if self.cos is None else torch.cat([self.cos, cos], 1)
            self.sin = sin if self.sin is None else torch.cat([self.sin, sin], 1)
        start = len(self.caches[0])
        for b, cache in enumerate(self.caches):
            for t in range(new):
                position = start + t
                sink = o.sink_for(self.index, b, position)
                row = dict(v=v_rows[b, t], hidden_in=None if hidden is None else hidden[b, t],
                           sink=sink)
                row["k_pre_rope" if pre else "k"] = k_rows[b, t]
                cache.append(**row)
                if self.index == o.kvsink_layer:
                    o.sink_decisions[(b, position)] = 1 if cache.kept(position) else 0
        # Rows that can still change: the fp16 window and a pending KIVI/KVQuant group.
        keep = max(0, start - o.unsettled)
        k = self._heads(np.stack([c.keys(keep) for c in self.caches]), key_states)
        v = self._heads(np.stack([c.values(keep) for c in self.caches]), value_states)
        if pre:
            k = o.hooks.rope(k, self.cos[:, keep:], self.sin[:, keep:])
        if start == 0:
            self.keys, self.values = k, v
        else:
            self.keys = torch.cat([self.keys[:, :, :keep], k], 2)
            self.values = torch.cat([self.values[:, :, :keep], v], 2)
        return self.keys, self.values

    def _heads(self, rows, like):
        """numpy [B, T, H*d] in kvq order -> [B, H, T, d] in the model's order, like's dtype."""
        b, t, _ = rows.shape
        h, d = like.shape[1], like.shape[3]
        x = torch.from_numpy(rows).reshape(b, t, h, d).transpose(1, 2)[..., self.inverse]
        return x.to(like.device, like.dtype)

    def storage(self):
        """(stored bits, K and V elements) over every sequence of this layer (docs/spec.md §3)."""
        bits = elements = 0
        for c in self.caches if self.is_initialized else []:
            for s in (c.k_storage(), c.v_storage()):
                bits += s["total"]
                elements += s["elements"]
        return bits, elements


class KvqCache(Cache):
    """A transformers Cache whose appended K/V go through a kvq method (module docstring).

    model: the transformers causal LM the cache is used with (its hooks are installed once);
    method, bits and params: as kvq.MethodParams (group, window, clip, zero_point, ...);
    calibration: kvq.Calibration of the method (kvq.hf.calibrate; required for rotatekv's
    permutation and KVSink's l*/C*, otherwise an empty one);
    backend: 'ref' (the incremental cache is the reference definition, as in `kvq ppl`)."""

    def __init__(self, model, method, bits=2, calibration=None, backend="ref", **params):
        if backend != "ref":
            raise _kvq.Error(f"kvq.hf: backend {backend} has no incremental (per-token) cache; "
                             "methods run on backend ref")
        self.params = method if isinstance(method, _kvq.MethodParams) else \
            _kvq.MethodParams(method, bits, **params)
        self.hooks = Hooks.of(model)
        self.num_layers = len(self.hooks.layers)
        self.calibration = calibration if calibration is not None else _kvq.Calibration()
        name = self.params.method
        self.needs_hidden = name in ("rotatekv", "kvsink+kvquant")
        self.kvsink_layer = self.calibration.kvsink_layer if name == "kvsink+kvquant" else -1
        self.sink_decisions = {}
        window = self.params.window if self.params.window >= 0 else (128 if name == "kivi" else 0)
        self.unsettled = window + self.params.group + 1
        super().__init__(layers=[KvqLayer(self, i) for i in range(self.num_layers)])

    def sink_for(self, layer, b, position):
        """KVSink: the decision made at l* for this token on layers after it (kvq ppl's rule);
        -1 (the method decides) everywhere else."""
        if 0 <= self.kvsink_layer < layer:
            return self.sink_decisions.get((b, position), 0)
        return -1

    def storage(self):
        """(stored bits, K and V elements) over every layer and sequence."""
        bits = elements = 0
        for layer in self.layers:
            b, e = layer.storage()
            bits += b
            elements += e
        return bits, elements


class _RecordingLayer(DynamicLayer):
    def __init__(self, owner, index):
        super().__init__()
        self.owner, self.index = owner, index

    def update(self, key_states, value_states, cache_kwargs=None):
        o, order = self.owner, _kvq_order(key_states.shape[-1])
        k_pre, _, q_out = o.hooks.pre_rope.get(self.index, (None, None, None))
        rec = o.layers_out[self.index]
        rec["k"].append(_rows(key_states, order)[0])
        rec["v"].append(_rows(value_states, order)[0])
        if k_pre is not None:
            rec["k_pre_rope"].append(_rows(k_pre, order)[0])
            rec["q"].append(_rows(q_out, order)[0])
        h = o.hooks.hidden.get(self.index)
        rec["hidden_in"].append(h[0].detach().to("cpu", torch.float32).numpy())
        return super().update(key_states, value_states, cache_kwargs)


class _RecordingCache(DynamicCache):
    def __init__(self, model):
        self.hooks = Hooks.of(model)
        n = len(self.hooks.layers)
        self.layers_out = [dict(k=[], v=[], k_pre_rope=[], q=[], hidden_in=[]) for _ in range(n)]
        Cache.__init__(self, layers=[_RecordingLayer(self, i) for i in range(n)])


def record(model, input_ids, one_token_at_a_time=False):
    """The fp32 activations of one sequence (input_ids [T] or [1, T]) as kvq's recording
    layers: a list of dicts k, k_pre_rope, v [T, H_kv, d], q [T, H_q, d], hidden_in
    [T, hidden] (float32 numpy, kvq's channel order, as tools/record_hf.py records).
    one_token_at_a_time: decode as KvqCache users do (the same matmul shapes, so layer 0's
    rows equal what a decoding KvqCache receives, bit for bit)."""
    ids = torch.as_tensor(input_ids).reshape(1, -1).to(model.device)
    cache = _RecordingCache(model)
    with torch.inference_mode():
        steps = [ids[:, t: t + 1] for t in range(ids.shape[1])] if one_token_at_a_time else [ids]
        for step in steps:
            model(input_ids=step, past_key_values=cache, use_cache=True)
    layers = []
    for rec in cache.layers_out:
        layer = {}
        for name, parts in rec.items():
            if not parts:
                continue
            x = np.concatenate(parts, 0)
            if name != "hidden_in":
                d = _head_dim(model)
                x = x.reshape(x.shape[0], -1, d)
            layer[name] = np.ascontiguousarray(x, dtype=np.float32)
        layers.append(layer)
    return layers


def _head_dim(model):
    c = model.config
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def calibrate(model, input_ids, method, bits=2, **params):
    """The method's whole-sequence decisions (rotatekv permutation, KVSink l*/C*/median) from
    the fp32 activations of input_ids, as `kvq ppl` calibrates on its first chunk."""
    p = method if isinstance(method, _kvq.MethodParams) else _kvq.MethodParams(method, bits,
                                                                               **params)
    if p.method == "fp32":
        return _kvq.Calibration()
    return _kvq.calibrate(record(model, input_ids), p)
