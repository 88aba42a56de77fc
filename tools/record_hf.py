#!/usr/bin/env python3
"""Records a Hugging Face causal LM's per-layer activations in kvq's recording schema.

What one run writes (docs/design.md "Recording"), for every decoder layer i, T = --tokens:
  layers.{i}.hidden_in   [T, hidden]        residual stream entering layer i
  layers.{i}.q           [T, H_q, d]        query after RoPE
  layers.{i}.k_pre_rope  [T, H_kv, d]       key as it enters the model's RoPE (k_proj output;
                                            after the per-head k_norm for Qwen3-style models)
  layers.{i}.k           [T, H_kv, d]       key after RoPE (what the KV cache holds)
  layers.{i}.v           [T, H_kv, d]       v_proj output
and for Mixture-of-Experts layers (a `gate` router and `experts[e]` with `down_proj`, or `w2`
for Mixtral):
  layers.{i}.experts.ids          [T, top_k] int32  the router's top-k experts, best first
  layers.{i}.experts.down_absmax  [T, top_k]        max |down_proj output| of that expert
  layers.{i}.experts.down_argmax  [T, top_k] int32  the channel where it occurs (first on ties)
plus `modality` [T] uint8 (0 text, 1 image) when --modality is given, and metadata: the model
name, its dimensions, rope_theta, the token ids (JSON) and the text they decode to.

How: forward hooks on each decoder layer (hidden_in), on self_attn.v_proj (v) and on the MoE
router and experts; q, k_pre_rope and k are taken at the model's own apply_rotary_pos_emb
call (its input and output), so they are exactly what the model attends with. Hugging Face
Llama-family models rotate channel pairs (j, j + d/2) ("rotate_half"); kvq's RoPE (docs/spec.md §7,
reference/attention.h apply_rope) rotates pairs (2j, 2j+1). By default q, k_pre_rope and k
are stored with each head's channels permuted to kvq's layout (channel 2j <- j, 2j+1 <- j+d/2)
so kvq's RoPE of k_pre_rope gives k; q . k is unchanged by that permutation. --layout model
keeps the model's channel order (metadata rope_layout says which).

The text is tokenized with the model directory's tokenizer as the model expects it (special
tokens such as BOS included), and the first --tokens tokens are recorded, run through the model
in chunks of --chunk tokens with its KV cache (progress on stderr).

Exit status: 0 written, 2 bad input (missing file, bad option, model without the expected
modules), 1 anything else. The output is written to a temporary file and renamed into place.
"""
import argparse
import json
import os
import sys

DESCRIPTION = """\
Run a Hugging Face causal LM (Llama-family attention; Mixtral / Qwen2-MoE / Qwen3-MoE experts)
over the start of a text and record, per decoder layer i, in kvq's recording schema:
  layers.{i}.hidden_in [T, hidden]    residual stream entering the layer
  layers.{i}.q, .k     [T, H, d]      query and key after RoPE (as attention uses them)
  layers.{i}.k_pre_rope, .v           key before RoPE, value
  layers.{i}.experts.ids / .down_absmax / .down_argmax [T, top_k]   (MoE layers)
      the router's top-k experts and each one's down_proj max |output| and its channel
  modality [T] uint8                  with --modality
plus metadata (model dimensions, rope_theta, token ids, text). q and k are stored in kvq's
RoPE pair order (2j, 2j+1); see --layout."""

EPILOG = """\
example:
  scripts/install-deps.sh --hf    # torch + transformers into .venv-hf/
  .venv-hf/bin/python3 tools/record_hf.py --model ./Qwen3-30B-A3B \\
      --text data/wikitext2-test.txt --tokens 1024 --out qwen3-moe.safetensors
  kvq sinks qwen3-moe.safetensors; kvq experts qwen3-moe.safetensors

exit status: 0 written, 2 bad input (missing file, bad option, unsupported model), 1 other."""


class UsageError(Exception):
    """Bad input: the message names the file or option; exits with status 2."""


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="record_hf.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="model directory (config, weights and tokenizer, as save_pretrained "
                   "writes) or a hub id")
    p.add_argument("--text", required=True, help="UTF-8 text file to run through the model")
    p.add_argument("--tokens", required=True, type=int,
                   help="number of tokens to record (the first N of the tokenized text, "
                   "special tokens included)")
    p.add_argument("--out", required=True, help="output recording (.safetensors)")
    p.add_argument("--modality", help="text file of N integers, 0 (text) or 1 (image), one per "
                   "recorded token, separated by spaces, commas or newlines; stored as "
                   "`modality` [T] uint8")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32",
                   help="dtype of the recorded float tensors (default f32)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the model runs (default cpu)")
    p.add_argument("--model-dtype", choices=["auto", "f32", "f16", "bf16"], default=None,
                   help="dtype the model computes in (default: f32 on cpu, the checkpoint's "
                   "on cuda)")
    p.add_argument("--chunk", type=int, default=512,
                   help="tokens per forward call; later chunks attend to the earlier ones "
                   "through the model's KV cache (default 512)")
    p.add_argument("--layout", choices=["kvq", "model"], default="kvq",
                   help="channel order of q, k_pre_rope, k within a head: kvq (RoPE on pairs "
                   "(2j, 2j+1), default) or the model's own")
    return p.parse_args(argv)


def check_args(args):
    if args.tokens < 1:
        raise UsageError(f"--tokens {args.tokens}: must be at least 1")
    if args.chunk < 1:
        raise UsageError(f"--chunk {args.chunk}: must be at least 1")
    if not os.path.isfile(args.text):
        raise UsageError(f"--text {args.text}: no such file")
    if args.modality is not None and not os.path.isfile(args.modality):
        raise UsageError(f"--modality {args.modality}: no such file")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out {args.out}: directory {out_dir} does not exist")
    # A path-like --model that does not exist would otherwise be tried as a hub id.
    looks_local = args.model.startswith((".", "/", "~")) or args.model.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(args.model)):
        raise UsageError(f"--model {args.model}: no such directory")


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UsageError(f"--text {path}: not UTF-8 ({e})") from e
    except OSError as e:
        raise UsageError(f"--text {path}: {e.strerror}") from e


def read_modality(path, tokens):
    try:
        with open(path, encoding="utf-8") as f:
            fields = f.read().replace(",", " ").split()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--modality {path}: cannot read ({e})") from e
    if len(fields) != tokens:
        raise UsageError(f"--modality {path}: {len(fields)} values, --tokens needs {tokens}")
    values = []
    for i, s in enumerate(fields):
        if s not in ("0", "1"):
            raise UsageError(f"--modality {path}: value {i} is '{s}', expected 0 or 1")
        values.append(int(s))
    return values


def progress(message):
    print(f"record_hf: {message}", file=sys.stderr, flush=True)


class ModelLayout:
    """The modules the recorder hooks, found by name; UsageError names what is missing."""

    def __init__(self, model, model_name):
        self.base = getattr(model, "base_model", None)
        layers = getattr(self.base, "layers", None)
        if layers is None or len(layers) == 0:
            raise UsageError(f"--model {model_name}: {type(model).__name__} has no "
                             "base_model.layers (decoder layers) to record")
        self.layers = list(layers)
        self.attention = []
        self.moe = []  # per layer: None or (block, gate, [(expert, down_proj)])
        for i, layer in enumerate(self.layers):
            attn = getattr(layer, "self_attn", None)
            missing = [n for n in ("q_proj", "k_proj", "v_proj") if not hasattr(attn, n)]
            if attn is None or missing:
                raise UsageError(f"--model {model_name}: layer {i} has no self_attn."
                                 f"{'/'.join(missing or ['q_proj'])} (not a Llama-family "
                                 "attention)")
            self.attention.append(attn)
            self.moe.append(self._find_moe(layer, i, model_name))
        module = sys.modules.get(type(self.attention[0]).__module__)
        if module is None or not callable(getattr(module, "apply_rotary_pos_emb", None)):
            raise UsageError(f"--model {model_name}: {type(self.attention[0]).__name__}'s module "
                             "has no apply_rotary_pos_emb (RoPE is where q and k are recorded)")
        self.rope_module = module

    @staticmethod
    def _find_moe(layer, index, model_name):
        for block in layer.modules():
            gate, experts = getattr(block, "gate", None), getattr(block, "experts", None)
            if gate is None or experts is None or not hasattr(experts, "__getitem__"):
                continue
            pairs = []
            for e, expert in enumerate(experts):
                down = getattr(expert, "down_proj", None)
                if down is None:
                    down = getattr(expert, "w2", None)
                if down is None:
                    raise UsageError(f"--model {model_name}: layer {index} expert {e} has no "
                                     "down_proj (or Mixtral's w2)")
                pairs.append((expert, down))
            if not pairs:
                raise UsageError(f"--model {model_name}: layer {index}: experts is empty")
            return block, gate, pairs
        return None


def first_tensor(args, kwargs, name):
    if args:
        return args[0]
    if name in kwargs:
        return kwargs[name]
    raise RuntimeError(f"hook: {name} not passed")


class Recorder:
    """Hooks that append each chunk's activations, per layer, as CPU fp32 tensors."""

    def __init__(self, torch, layout, top_k, kvq_layout):
        self.torch = torch
        self.layout = layout
        self.top_k = top_k
        self.kvq_layout = kvq_layout
        n = len(layout.layers)
        self.data = [dict(hidden_in=[], q=[], k_pre_rope=[], k=[], v=[], ids=[], absmax=[],
                          argmax=[]) for _ in range(n)]
        self.current = None  # the layer whose attention is running
        self.rope_calls = [0] * n
        self.moe_state = [None] * n
        self.handles = []
        self.original_rope = None

    def cpu(self, x):
        return x.detach().to("cpu", self.torch.float32)

    def interleave(self, x):
        """[..., d] in rotate_half order -> kvq's (2j, 2j+1) pair order (module docstring)."""
        if not self.kvq_layout:
            return x
        d = x.shape[-1]
        half = d // 2
        perm = self.torch.stack([self.torch.arange(half), self.torch.arange(half) + half], 1)
        return x[..., perm.reshape(-1)]

    def install(self):
        for i, (layer, attn) in enumerate(zip(self.layout.layers, self.layout.attention)):
            self.handles.append(layer.register_forward_pre_hook(
                self._hidden_hook(i), with_kwargs=True))
            self.handles.append(attn.register_forward_pre_hook(self._enter_hook(i)))
            self.handles.append(attn.v_proj.register_forward_hook(self._v_hook(i)))
            moe = self.layout.moe[i]
            if moe is not None:
                block, gate, experts = moe
                self.handles.append(block.register_forward_pre_hook(
                    self._moe_enter_hook(i), with_kwargs=True))
                self.handles.append(gate.register_forward_hook(self._gate_hook(i)))
                for e, (expert, down) in enumerate(experts):
                    self.handles.append(expert.register_forward_pre_hook(
                        self._expert_in_hook(i, e), with_kwargs=True))
                    self.handles.append(down.register_forward_hook(self._down_hook(i, e)))
                self.handles.append(block.register_forward_hook(self._moe_exit_hook(i)))
        module = self.layout.rope_module
        self.original_rope = module.apply_rotary_pos_emb
        module.apply_rotary_pos_emb = self._rope_wrapper(self.original_rope)

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.original_rope is not None:
            self.layout.rope_module.apply_rotary_pos_emb = self.original_rope
            self.original_rope = None

    def _hidden_hook(self, i):
        def hook(module, args, kwargs):
            h = first_tensor(args, kwargs, "hidden_states")
            self.data[i]["hidden_in"].append(self.cpu(h[0]))
        return hook

    def _enter_hook(self, i):
        def hook(module, args):
            self.current = i
        return hook

    def _v_hook(self, i):
        def hook(module, args, output):
            # [T, H_kv * d]; split into heads once k's head_dim is known (record()).
            self.data[i]["v"].append(self.cpu(output[0]))
        return hook

    def _rope_wrapper(self, original):
        torch = self.torch

        def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
            q_out, k_out = original(q, k, cos, sin, *args, **kwargs)
            i = self.current
            if i is None:
                raise RuntimeError("RoPE applied outside a recorded attention module")
            d = q.shape[-1]
            # The rotate_half signature: both halves of cos/sin carry the same angles. Anything
            # else (partial rotary, interleaved models) is not what the permutation assumes.
            if cos.shape[-1] != d or d % 2 or not (
                    torch.equal(cos[..., : d // 2], cos[..., d // 2:])
                    and torch.equal(sin[..., : d // 2], sin[..., d // 2:])):
                raise UsageError(f"layer {i}: RoPE is not the rotate_half form over the whole "
                                 f"head (head_dim {d}, cos {tuple(cos.shape)}); unsupported")
            # [B, H, T, d] -> [T, H, d], batch 0.
            rec = self.data[i]
            rec["q"].append(self.interleave(self.cpu(q_out[0]).transpose(0, 1)))
            rec["k_pre_rope"].append(self.interleave(self.cpu(k[0]).transpose(0, 1)))
            rec["k"].append(self.interleave(self.cpu(k_out[0]).transpose(0, 1)))
            self.rope_calls[i] += 1
            return q_out, k_out
        return apply_rotary_pos_emb

    # MoE: the block's input rows, the router logits, then per expert call its input rows and
    # down_proj output; matched to (token, slot) by row content when the block returns.
    def _moe_enter_hook(self, i):
        def hook(module, args, kwargs):
            h = first_tensor(args, kwargs, "hidden_states")
            self.moe_state[i] = dict(x=h.reshape(-1, h.shape[-1]), logits=None, calls=[],
                                     pending={})
        return hook

    def _gate_hook(self, i):
        def hook(module, args, output):
            logits = output[0] if isinstance(output, tuple) else output
            self.moe_state[i]["logits"] = logits
        return hook

    def _expert_in_hook(self, i, e):
        def hook(module, args, kwargs):
            self.moe_state[i]["pending"][e] = first_tensor(args, kwargs, "hidden_states")
        return hook

    def _down_hook(self, i, e):
        def hook(module, args, output):
            state = self.moe_state[i]
            rows = state["pending"].pop(e, None)
            if rows is None:
                raise RuntimeError(f"layer {i} expert {e}: down_proj ran outside its expert")
            state["calls"].append((e, rows, output))
        return hook

    def _moe_exit_hook(self, i):
        torch = self.torch

        def hook(module, args, output):
            state = self.moe_state[i]
            self.moe_state[i] = None
            x, logits = state["x"], state["logits"]
            if logits is None:
                raise RuntimeError(f"layer {i}: the router (gate) did not run")
            tokens = x.shape[0]
            # The router's own rule (Mixtral, Qwen2/3-MoE): softmax in fp32, then top-k.
            weights = torch.softmax(logits.reshape(tokens, -1).float(), dim=-1)
            ids = torch.topk(weights, self.top_k, dim=-1).indices.to("cpu")
            absmax = torch.full((tokens, self.top_k), float("nan"))
            argmax = torch.full((tokens, self.top_k), -1, dtype=torch.int32)
            # Which (token, slot) rows each expert should see, keyed by the row's bytes: equal
            # rows (repeated tokens) give equal outputs, so any pairing among them is the same.
            x_cpu = self.cpu(x)  # fp32 holds bf16/fp16 rows exactly
            wanted = {}
            for t in range(tokens):
                key = x_cpu[t].numpy().tobytes()
                for s in range(self.top_k):
                    wanted.setdefault((int(ids[t, s]), key), []).append((t, s))
            for e, rows, out in state["calls"]:
                rows = self.cpu(rows).reshape(-1, x.shape[-1])
                out = self.cpu(out).reshape(rows.shape[0], -1)
                mags = out.abs()
                row_max = mags.amax(dim=-1)
                row_arg = mags.argmax(dim=-1)  # first index of the maximum (torch contract)
                for r in range(rows.shape[0]):
                    slots = wanted.get((e, rows[r].numpy().tobytes()))
                    if not slots:
                        raise UsageError(f"layer {i}: expert {e} processed a token the "
                                           "router's top-k did not send it (routing rule "
                                           "differs from softmax + top-k)")
                    t, s = slots.pop()
                    absmax[t, s] = row_max[r]
                    argmax[t, s] = int(row_arg[r])
            if bool((argmax < 0).any()):
                t, s = [int(v) for v in (argmax < 0).nonzero()[0]]
                raise UsageError(f"layer {i}: token {t} was routed to expert "
                                   f"{int(ids[t, s])} (slot {s}) but that expert never "
                                   "processed it")
            rec = self.data[i]
            rec["ids"].append(ids.to(torch.int32))
            rec["absmax"].append(absmax)
            rec["argmax"].append(argmax)
        return hook


def config_value(config, *names):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return None


def load(args, torch):
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    model_dtype = args.model_dtype or ("f32" if args.device == "cpu" else "auto")
    dtype = {"auto": "auto", "f32": torch.float32, "f16": torch.float16,
             "bf16": torch.bfloat16}[model_dtype]
    path = os.path.expanduser(args.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises several types; the message is what helps
        raise UsageError(f"--model {args.model}: cannot load its tokenizer ({e})") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
    except Exception as e:
        raise UsageError(f"--model {args.model}: cannot load it as a causal LM ({e})") from e
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device")
    model.to(args.device).eval()
    return tokenizer, model, model_dtype


def write_atomic(path, tensors, metadata):
    from safetensors.torch import save_file

    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        save_file(tensors, tmp, metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record(args):
    check_args(args)
    text = read_text(args.text)
    try:
        import torch
        import transformers
    except ImportError as e:
        raise UsageError(f"torch and transformers are needed ({e}); "
                         "scripts/install-deps.sh --hf installs them into .venv-hf/") from e

    tokenizer, model, model_dtype = load(args, torch)
    config = model.config
    ids = tokenizer(text)["input_ids"]
    if len(ids) < args.tokens:
        raise UsageError(f"--text {args.text} encodes to {len(ids)} tokens; --tokens "
                         f"{args.tokens} needs more text")
    ids = ids[: args.tokens]
    limit = config_value(config, "max_position_embeddings")
    if limit is not None and args.tokens > limit:
        raise UsageError(f"--tokens {args.tokens} exceeds the model's max_position_embeddings "
                         f"{limit}")
    modality = read_modality(args.modality, args.tokens) if args.modality else None

    layout = ModelLayout(model, args.model)
    moe_layers = [i for i, m in enumerate(layout.moe) if m is not None]
    top_k = num_experts = 0
    if moe_layers:
        top_k = int(config_value(config, "num_experts_per_tok", "top_k") or 0)
        num_experts = len(layout.moe[moe_layers[0]][2])
        if not 1 <= top_k <= num_experts:
            raise UsageError(f"--model {args.model}: num_experts_per_tok {top_k} is not in "
                             f"[1, {num_experts}]")

    recorder = Recorder(torch, layout, top_k, args.layout == "kvq")
    recorder.install()
    try:
        with torch.inference_mode():
            cache = None
            for start in range(0, args.tokens, args.chunk):
                chunk = torch.tensor([ids[start: start + args.chunk]], device=args.device)
                out = layout.base(input_ids=chunk, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                done = min(start + args.chunk, args.tokens)
                progress(f"{done}/{args.tokens} tokens")
    finally:
        recorder.remove()

    chunks = (args.tokens + args.chunk - 1) // args.chunk
    float_dtype = torch.float16 if args.dtype == "f16" else torch.float32
    tensors = {}
    for i, rec in enumerate(recorder.data):
        if recorder.rope_calls[i] != chunks:
            raise UsageError(f"--model {args.model}: layer {i} called apply_rotary_pos_emb "
                             f"{recorder.rope_calls[i]} times for {chunks} chunks")
        names = [("hidden_in", "hidden_in"), ("q", "q"), ("k_pre_rope", "k_pre_rope"),
                 ("k", "k"), ("v", "v")]
        if layout.moe[i] is not None:
            names += [("experts.ids", "ids"), ("experts.down_absmax", "absmax"),
                      ("experts.down_argmax", "argmax")]
        for name, key in names:
            t = torch.cat(rec[key], 0)
            if name == "v":
                t = t.reshape(t.shape[0], -1, rec["k"][0].shape[-1])
            if t.shape[0] != args.tokens:
                raise RuntimeError(f"layers.{i}.{name}: {t.shape[0]} rows for {args.tokens} "
                                   "tokens")
            if t.is_floating_point():
                t = t.to(float_dtype)
                if not bool(torch.isfinite(t).all()):
                    raise UsageError(f"layers.{i}.{name}: values overflow --dtype "
                                     f"{args.dtype} (or the model produced inf/nan)")
            tensors[f"layers.{i}.{name}"] = t.contiguous()
    if modality is not None:
        tensors["modality"] = torch.tensor(modality, dtype=torch.uint8)

    q0, k0 = tensors["layers.0.q"], tensors["layers.0.k"]
    name = config_value(config, "_name_or_path") or args.model
    meta = {
        "model": os.path.basename(os.path.normpath(name)) or name,
        "format": "transformers",
        "recorder": "tools/record_hf.py",
        "architecture": (config.architectures or [type(model).__name__])[0],
        "n_layers": str(len(layout.layers)),
        "n_heads": str(q0.shape[1]),
        "n_kv_heads": str(k0.shape[1]),
        "head_dim": str(q0.shape[2]),
        "dim": str(tensors["layers.0.hidden_in"].shape[1]),
        "tokens": json.dumps(ids),
        "text": tokenizer.decode(ids),
        "rope_layout": "interleaved (kvq: pairs 2j, 2j+1; permuted from the model's j, j+d/2)"
        if args.layout == "kvq" else "model (rotate_half: pairs j, j+d/2)",
        "dtype": args.dtype,
        "model_dtype": model_dtype,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    for key, names in (("hidden_dim", ("intermediate_size",)), ("vocab_size", ("vocab_size",)),
                       ("seq_len", ("max_position_embeddings",)),
                       ("rope_theta", ("rope_theta",))):
        v = config_value(config, *names)
        if v is not None:
            meta[key] = f"{v:g}" if isinstance(v, float) else str(v)
    rope_scaling = config_value(config, "rope_scaling")
    if rope_scaling:
        meta["rope_scaling"] = json.dumps(rope_scaling, sort_keys=True, default=str)
    if moe_layers:
        # Both spellings readers use: tiny-moe.safetensors (n_experts, top_k), kvq synth
        # (num_experts, num_experts_per_tok).
        meta.update(n_experts=str(num_experts), num_experts=str(num_experts), top_k=str(top_k),
                    num_experts_per_tok=str(top_k), moe_layers=json.dumps(moe_layers))
    if modality is not None:
        meta["image_tokens"] = str(sum(modality))

    write_atomic(args.out, tensors, meta)
    print(f"recorded {args.tokens} tokens x {len(layout.layers)} layers of {meta['model']} "
          f"into {args.out}" + (f" (MoE layers {moe_layers}, top-{top_k} of {num_experts})"
                                if moe_layers else ""))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        record(args)
    except UsageError as e:
        print(f"record_hf: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
