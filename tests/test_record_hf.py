#!/usr/bin/env python3
"""tools/record_hf.py on tiny randomly initialized models built from a config (no download):
a Llama, a Mixtral (MoE, experts' w2) and a Qwen3-MoE (MoE, down_proj, per-head q/k norm).

Each model is saved with a small word-level tokenizer made here (tokenizers' WordLevel, BOS
added by its post-processor) so the recorder runs its normal AutoTokenizer path. Checks:
  - the schema: tensor names, dtypes, shapes, metadata (token ids = the tokenizer's own);
  - hidden_in equals the model's own hidden_states of an unhooked whole-sequence forward, and
    layer 0's equals the embedding of the tokens;
  - k_pre_rope, v and the pre-RoPE q equal k_proj / v_proj / q_proj (Qwen3: then its k_norm /
    q_norm) called here on the layer's normed hidden_in, with kvq's pair order;
  - k and q equal an fp64 RoPE (docs/spec.md §7 pairs 2j, 2j+1, angle t * theta^(-2j/d)) of them;
  - MoE: experts.ids equal the top-k of the router called here on the block's input, and
    down_absmax / down_argmax equal the selected expert called here on that one token;
  - errors exit 2 naming the file/option; no temporary file is left;
  - kvq sinks, kvq experts and kvq run (op quantize on the recording) exit 0, and kvq apply
    kvquant 8-bit rebuilds the recorded post-RoPE k from k_pre_rope (kvq's RoPE, θ 10000).
Exit 0 all passed, 1 a check failed, 77 skipped (torch/transformers not importable).
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RECORDER = os.path.join(ROOT, "tools", "record_hf.py")

from hf_venv import import_or_skip  # noqa: E402

import_or_skip(__file__, ("torch", "transformers", "tokenizers", "safetensors"))

import numpy as np  # noqa: E402  (after the skip check: comes with torch's environment)
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

WORDS = ("the cat sat on a mat and looked at the small dog , which ran to the red door . "
         "then it saw one bird fly over a tall tree near our house while rain fell").split()
T = 80       # the sink study scores tokens j <= T - 64, so T >= 64
CHUNK = 32   # 80 = 32 + 32 + 16: later chunks go through the model's KV cache
# RoPE base per model: 500 (not the usual 10000) so metadata and RoPE must follow the model's;
# 10000 for Qwen3-MoE, the base kvq's methods use, so `kvq apply` can rebuild its keys.
THETA = {"llama": 500.0, "mixtral": 500.0, "qwen3_moe": 10000.0}

failures = []
passes = 0


def check(ok, name, detail=""):
    global passes
    if ok:
        passes += 1
        print(f"PASS: {name}")
    else:
        failures.append(name)
        print(f"FAIL: {name}" + (f": {detail}" if detail else ""))
    return ok


def close(name, got, want, rtol=1e-4, atol=1e-5):
    got = torch.as_tensor(got, dtype=torch.float64)
    want = torch.as_tensor(want, dtype=torch.float64)
    if got.shape != want.shape:
        return check(False, name, f"shape {tuple(got.shape)} vs {tuple(want.shape)}")
    err = (got - want).abs()
    bound = atol + rtol * want.abs()
    worst = int(torch.argmax(err - bound))
    return check(bool((err <= bound).all()), name,
                 f"max |diff| {float(err.max()):.3g} at flat index {worst} "
                 f"(got {float(got.flatten()[worst]):.8g}, "
                 f"want {float(want.flatten()[worst]):.8g})")


def text_file(directory, words=200):
    rng = np.random.default_rng(7)
    path = os.path.join(directory, "text.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), words)) + "\n")
    return path


def save_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="[UNK]")
    fast.save_pretrained(directory)
    return fast


def build(kind, directory):
    """A tiny random model of `kind` saved (with the tokenizer) to `directory`."""
    import transformers as tf

    torch.manual_seed({"llama": 1, "mixtral": 2, "qwen3_moe": 3}[kind])
    common = dict(vocab_size=64, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rope_theta=THETA[kind],
                  bos_token_id=1, eos_token_id=2, initializer_range=0.1)
    if kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(intermediate_size=96, head_dim=16, **common))
    elif kind == "mixtral":
        model = tf.MixtralForCausalLM(tf.MixtralConfig(
            intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, **common))
    else:
        model = tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(
            intermediate_size=96, moe_intermediate_size=48, num_experts=6, num_experts_per_tok=2,
            decoder_sparse_step=1, mlp_only_layers=[], head_dim=16, norm_topk_prob=True,
            **common))
    # Routers with unit-scale weights: top-k choices far from ties, so the independent
    # recompute below (a different batch shape, other rounding) must pick the same experts.
    for layer in model.model.layers:
        for m in layer.modules():
            if hasattr(m, "gate") and hasattr(m, "experts"):
                torch.nn.init.normal_(m.gate.weight, std=1.0)
    model.save_pretrained(directory)
    save_tokenizer(directory)
    return model.eval()


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def record(model_dir, text, out, *extra):
    return run([sys.executable, RECORDER, "--model", model_dir, "--text", text, "--tokens",
                str(T), "--out", out, "--chunk", str(CHUNK), *extra])


def to_kvq_pairs(x):
    """[..., d] rotate_half order -> pairs (2j, 2j+1) = (j, j + d/2), written independently of
    the recorder's index permutation."""
    half = x.shape[-1] // 2
    return torch.stack((x[..., :half], x[..., half:]), dim=-1).flatten(-2)


def rope_fp64(x, theta):
    """docs/spec.md §7 RoPE on pairs (2j, 2j+1) of [T, H, d] at positions 0..T-1, in fp64."""
    x = x.to(torch.float64)
    t_count, _, d = x.shape
    j = torch.arange(d // 2, dtype=torch.float64)
    angle = torch.arange(t_count, dtype=torch.float64)[:, None] * theta ** (-2.0 * j / d)
    cos, sin = torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def load_recording(path):
    tensors, dtypes = {}, {}
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
            dtypes[k] = str(f.get_slice(k).get_dtype())
    return tensors, dtypes, meta


def check_schema(kind, model, rec, dtypes, meta, token_ids, text, modality):
    c = model.config
    layers, d = c.num_hidden_layers, 16
    moe = kind != "llama"
    expected = {}
    for i in range(layers):
        p = f"layers.{i}."
        expected.update({p + "hidden_in": ("F32", [T, c.hidden_size]),
                         p + "q": ("F32", [T, c.num_attention_heads, d]),
                         p + "k_pre_rope": ("F32", [T, c.num_key_value_heads, d]),
                         p + "k": ("F32", [T, c.num_key_value_heads, d]),
                         p + "v": ("F32", [T, c.num_key_value_heads, d])})
        if moe:
            k = c.num_experts_per_tok
            expected.update({p + "experts.ids": ("I32", [T, k]),
                             p + "experts.down_absmax": ("F32", [T, k]),
                             p + "experts.down_argmax": ("I32", [T, k])})
    if modality is not None:
        expected["modality"] = ("U8", [T])
    check(set(rec) == set(expected), f"{kind}: schema: tensor names",
          f"extra {sorted(set(rec) - set(expected))}, missing {sorted(set(expected) - set(rec))}")
    bad = [n for n in expected if n in rec and
           (dtypes[n], list(rec[n].shape)) != expected[n]]
    check(not bad, f"{kind}: schema: dtypes and shapes",
          "; ".join(f"{n} {dtypes[n]} {list(rec[n].shape)} != {expected[n]}" for n in bad))
    want_meta = {"format": "transformers", "n_layers": str(layers),
                 "n_heads": str(c.num_attention_heads), "n_kv_heads": str(c.num_key_value_heads),
                 "head_dim": str(d), "dim": str(c.hidden_size), "vocab_size": str(c.vocab_size),
                 "rope_theta": f"{THETA[kind]:g}", "dtype": "f32"}
    if moe:
        e = c.num_local_experts if kind == "mixtral" else c.num_experts
        want_meta.update(num_experts=str(e), n_experts=str(e), top_k="2",
                         num_experts_per_tok="2", moe_layers=json.dumps(list(range(layers))))
    wrong = {k: (meta.get(k), v) for k, v in want_meta.items() if meta.get(k) != v}
    check(not wrong, f"{kind}: schema: metadata values", str(wrong))
    check(json.loads(meta.get("tokens", "null")) == token_ids,
          f"{kind}: metadata tokens are the tokenizer's first {T} ids (BOS first)")
    check(meta.get("text") == text, f"{kind}: metadata text = the tokenizer's decoding of them",
          f"{meta.get('text', '')[:60]!r} vs {text[:60]!r}")
    if modality is not None:
        check(rec["modality"].tolist() == modality and meta.get("image_tokens") ==
              str(sum(modality)), f"{kind}: modality tensor and image_tokens as given")


def check_activations(kind, model, rec, token_ids):
    c = model.config
    ids = torch.tensor([token_ids])
    hidden = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for m in layer.modules():
            if hasattr(m, "gate") and hasattr(m, "experts"):
                hooks.append(m.register_forward_pre_hook(
                    lambda mod, args, i=i: hidden.__setitem__(i, args[0][0].clone())))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for h in hooks:
        h.remove()
    # hidden_states[i] is the input of layer i (the last entry is after the final norm).
    for i in range(c.num_hidden_layers):
        close(f"{kind}: layer {i} hidden_in = the model's own hidden_states[{i}] "
              "(unhooked whole-sequence forward)", rec[f"layers.{i}.hidden_in"],
              out.hidden_states[i][0])
    emb = model.model.embed_tokens(ids)[0]
    check(torch.equal(rec["layers.0.hidden_in"], emb),
          f"{kind}: layer 0 hidden_in = embed_tokens(tokens) exactly")

    d = 16
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(rec[f"layers.{i}.hidden_in"][None])
            k = attn.k_proj(x)[0].view(T, c.num_key_value_heads, d)
            q = attn.q_proj(x)[0].view(T, c.num_attention_heads, d)
            v = attn.v_proj(x)[0].view(T, c.num_key_value_heads, d)
            what = "k_proj"
            if hasattr(attn, "k_norm"):  # Qwen3: per-head RMSNorm before RoPE
                k, q, what = attn.k_norm(k), attn.q_norm(q), "k_norm(k_proj)"
            close(f"{kind}: layer {i} k_pre_rope = {what} of the normed hidden_in "
                  "(kvq pair order)", rec[f"layers.{i}.k_pre_rope"], to_kvq_pairs(k))
            close(f"{kind}: layer {i} v = v_proj of the normed hidden_in",
                  rec[f"layers.{i}.v"], v)
            theta = THETA[kind]
            close(f"{kind}: layer {i} k = fp64 RoPE(k_pre_rope), theta {theta:g}",
                  rec[f"layers.{i}.k"], rope_fp64(rec[f"layers.{i}.k_pre_rope"], theta))
            close(f"{kind}: layer {i} q = fp64 RoPE(q_proj of the normed hidden_in)",
                  rec[f"layers.{i}.q"], rope_fp64(to_kvq_pairs(q), theta))
            if i in hidden:
                check_moe(kind, i, layer, hidden[i], rec, c.num_experts_per_tok)


def check_moe(kind, i, layer, x, rec, top_k):
    block = next(m for m in layer.modules() if hasattr(m, "gate") and hasattr(m, "experts"))
    logits = block.gate(x)
    top = torch.topk(logits, top_k + 1, dim=-1)
    # Far from ties (the routers have unit-scale weights), or the comparison is meaningless.
    margin = float((top.values[:, top_k - 1] - top.values[:, top_k]).min())
    check(margin > 1e-3, f"{kind}: layer {i} router top-{top_k} is clear of ties",
          f"min margin {margin:.3g}")
    ids = rec[f"layers.{i}.experts.ids"].long()
    want = top.indices[:, :top_k]
    bad = (ids != want).any(dim=1).nonzero().flatten().tolist()
    check(not bad, f"{kind}: layer {i} experts.ids = the router's own top-{top_k} (best first)",
          f"{len(bad)} tokens differ, first {bad[:1]}: "
          f"{ids[bad[0]].tolist() if bad else ''} vs {want[bad[0]].tolist() if bad else ''}")
    want_abs = torch.empty(T, top_k)
    want_arg = torch.empty(T, top_k, dtype=torch.int64)
    unclear = 0
    for t in range(T):
        for s in range(top_k):
            e = int(top.indices[t, s])
            y = block.experts[e](x[t:t + 1])[0].abs()  # the expert's output = its down_proj's
            want_abs[t, s] = y.max()
            want_arg[t, s] = int(torch.argmax(y))
            two = torch.topk(y, 2).values
            unclear += int(float(two[0] - two[1]) <= 1e-6 * float(two[0]))
    close(f"{kind}: layer {i} experts.down_absmax = the selected expert's down_proj max-abs "
          "recomputed per token", rec[f"layers.{i}.experts.down_absmax"], want_abs)
    check(unclear == 0 and torch.equal(rec[f"layers.{i}.experts.down_argmax"].long(), want_arg),
          f"{kind}: layer {i} experts.down_argmax = the channel of that max",
          f"{unclear} near-ties")


def check_model_layout(model_dir, text, work):
    """--layout model --dtype f16: the model's own channel order, stored as fp16."""
    out = os.path.join(work, "llama-model-layout.safetensors")
    r = record(model_dir, text, out, "--layout", "model", "--dtype", "f16")
    if not check(r.returncode == 0, "llama: --layout model --dtype f16 records", r.stderr[-500:]):
        return
    rec, dtypes, meta = load_recording(out)
    check(dtypes["layers.0.k"] == "F16" and dtypes["layers.0.hidden_in"] == "F16"
          and meta.get("dtype") == "f16", "llama: --dtype f16 stores F16 tensors")
    ref, _, _ = load_recording(os.path.join(work, "llama.safetensors"))
    close("llama: --layout model k_pre_rope = the kvq-layout one with pairs undone",
          to_kvq_pairs(rec["layers.1.k_pre_rope"].float()), ref["layers.1.k_pre_rope"],
          rtol=1e-3, atol=1e-3)


def check_errors(model_dir, text, work, gpt2_dir):
    out = os.path.join(work, "err.safetensors")
    cases = [
        ("missing text file", ["--text", os.path.join(work, "absent.txt")], "absent.txt"),
        ("--tokens 0", ["--tokens", "0"], "--tokens"),
        ("text shorter than --tokens", ["--tokens", "100000"], "text.txt"),
        ("model without Llama-family layers", ["--model", gpt2_dir], "--model"),
        ("missing model directory", ["--model", os.path.join(work, "nothere")], "nothere"),
    ]
    for name, override, needle in cases:
        args = {"--model": model_dir, "--text": text, "--tokens": str(T), "--out": out}
        for k, v in zip(override[0::2], override[1::2]):
            args[k] = v
        r = run([sys.executable, RECORDER, *[a for kv in args.items() for a in kv]])
        check(r.returncode == 2 and needle in r.stderr and not os.path.exists(out),
              f"error: {name} exits 2 naming {needle}, writes nothing",
              f"rc {r.returncode}, stderr {r.stderr.strip()[-300:]}")
    leftovers = [f for f in os.listdir(work) if ".tmp-" in f]
    check(not leftovers, "no temporary files left behind", str(leftovers))


def check_cli(work, recordings):
    kvq = os.environ.get("KVQ_BIN")
    if not check(bool(kvq) and os.access(kvq, os.X_OK), "KVQ_BIN names the kvq binary",
                 f"KVQ_BIN='{kvq}'"):
        return
    for kind, path in recordings.items():
        r = run([kvq, "sinks", path, "--db", ""])
        check(r.returncode == 0, f"kvq sinks on the {kind} recording exits 0",
              (r.stdout + r.stderr)[-500:])
        if kind != "llama":
            r = run([kvq, "experts", path, "--db", ""])
            check(r.returncode == 0, f"kvq experts on the {kind} recording exits 0",
                  (r.stdout + r.stderr)[-500:])
        scenario = os.path.join(work, f"scenario-{kind}.toml")
        with open(scenario, "w") as f:
            f.write(f'[scenario]\nname = "record-hf-{kind}"\nbackends = ["ref"]\n\n'
                    f'[[case]]\nop = "quantize"\ninput = "{os.path.basename(path)}"\n'
                    'bits = [2, 4]\ngroup = 16\n')
        r = run([kvq, "run", scenario, "--db", os.path.join(work, f"{kind}.db")])
        check(r.returncode == 0, f"kvq run (op quantize, input = the {kind} recording) exits 0",
              (r.stdout + r.stderr)[-500:])
        if THETA[kind] == 10000.0:
            check_apply(kvq, kind, path, work)


def check_apply(kvq, kind, path, work):
    """kvq apply kvquant (pre-RoPE keys, kvq's RoPE applied after dequantization, docs/spec.md §8)
    at 8 bits must rebuild the model's post-RoPE k: it does only if k_pre_rope is stored in
    kvq's pair order (with --layout model the error is ~100%)."""
    out = os.path.join(work, f"{kind}-kvquant8.safetensors")
    r = run([kvq, "apply", "--method", "kvquant", "--bits", "8", "--in", path, "--out", out])
    if not check(r.returncode == 0, f"kvq apply --method kvquant on the {kind} recording exits 0",
                 (r.stdout + r.stderr)[-500:]):
        return
    applied, _, _ = load_recording(out)
    rec, _, meta = load_recording(path)
    errors = []
    for i in range(int(meta["n_layers"])):
        k = rec[f"layers.{i}.k"].double()
        errors.append(float((applied[f"layers.{i}.k.dequant"].double() - k).norm() / k.norm()))
    check(max(errors) < 0.02, f"{kind}: kvq apply kvquant 8-bit rebuilds the recorded post-RoPE "
          "k from k_pre_rope (relative error < 2%)", f"errors per layer {errors}")


def main():
    from transformers import AutoTokenizer
    import transformers as tf

    print(f"torch {torch.__version__}, transformers {tf.__version__}")
    with tempfile.TemporaryDirectory(prefix="kvq-record-hf-") as work:
        text = text_file(work)
        recordings = {}
        for kind in ("llama", "mixtral", "qwen3_moe"):
            model_dir = os.path.join(work, kind)
            model = build(kind, model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            with open(text, encoding="utf-8") as f:
                token_ids = tokenizer(f.read())["input_ids"][:T]
            out = os.path.join(work, f"{kind}.safetensors")
            modality = None
            extra = []
            if kind != "llama":  # an image block at tokens 8..23, as a VLM's input would have
                modality = [1 if 8 <= t < 24 else 0 for t in range(T)]
                mod_path = os.path.join(work, "modality.txt")
                with open(mod_path, "w") as f:
                    f.write(" ".join(map(str, modality)) + "\n")
                extra = ["--modality", mod_path]
            r = record(model_dir, text, out, *extra)
            progress_ok = f"{T}/{T} tokens" in r.stderr and f"{CHUNK}/{T} tokens" in r.stderr
            if not check(r.returncode == 0 and progress_ok,
                         f"{kind}: record_hf exits 0 with progress on stderr",
                         f"rc {r.returncode}: {r.stderr[-800:]}"):
                continue
            recordings[kind] = out
            rec, dtypes, meta = load_recording(out)
            check_schema(kind, model, rec, dtypes, meta, token_ids, tokenizer.decode(token_ids),
                         modality)
            check_activations(kind, model, rec, token_ids)
        gpt2 = os.path.join(work, "gpt2")
        tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64,
                                         n_positions=128)).save_pretrained(gpt2)
        save_tokenizer(gpt2)
        check_errors(os.path.join(work, "llama"), text, work, gpt2)
        if "llama" in recordings:
            check_model_layout(os.path.join(work, "llama"), text, work)
        check_cli(work, recordings)
    # Not the "N passed, N failed" form: CI reads that line from scripts/test.sh only.
    print(f"record_hf: {len(failures)} of {passes + len(failures)} checks failed"
          + "".join(f"\n  failed: {name}" for name in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
