#!/usr/bin/env python3
"""kvq.hf, python -m kvq.ppl and kvq.llama2c against the C++ kvq (suite 'hf', CPU).

  - kvq.llama2c: the per-head RoPE row permutation on a hand-worked head; data/stories260K.bin
    converted to a Hugging Face LlamaForCausalLM gives `kvq ppl`'s fp32 perplexity within 1e-4
    relative (data/tinystories-sample.txt, first 1020 tokens, W 256, llama2.c's tokenizer);
  - every method at 2 and 4 bits: python -m kvq.ppl's mean NLL within TOLERANCE_NLL nats of
    kvq ppl's and bits/element within 0.01 (derivation: docs/readme-python.md "Cross-check");
    the rows are in the results store as `kvq report accuracy` lists them;
  - tiny random Llama, Mistral and Qwen3-MoE models (as tests/test_record_hf.py builds them):
    KvqCache('fp32') decodes the same logits as transformers' DynamicCache bit for bit; for
    rtn, kivi, akvq-vl, kvquant at 4 bits (G 16) layer 0's cache (whose inputs do not depend on
    the cache) holds exactly kvq.apply_method's reconstruction of the same rows (V bit for bit,
    K bit for bit for post-RoPE methods, within 2e-6 relative for pre-RoPE ones, whose RoPE is
    the model's own); every method decodes with finite logits;
  - the bindings on torch tensors (tests/test_python.py test_torch; CUDA parts skip without a
    GPU).
Exit 0 all passed, 1 a check failed, 77 skipped (torch/transformers not importable).
"""
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOLERANCE_NLL = 5e-3  # nats: PPL within 0.5 % (docs/readme-python.md "Cross-check")

from hf_venv import import_or_skip  # noqa: E402

import_or_skip(__file__)
sys.path.insert(0, os.environ.get("KVQ_PYTHONPATH", os.path.join(ROOT, "build", "python")))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

import kvq  # noqa: E402
import kvq.hf  # noqa: E402
import kvq.llama2c  # noqa: E402
import kvq.ppl  # noqa: E402
import test_python  # noqa: E402  (its checks, failure list and torch-tensor cases)
from test_python import check, failures, same_bits  # noqa: E402

DATA = os.environ.get("KVQ_DATA", os.path.join(ROOT, "data"))
KVQ_BIN = os.environ.get("KVQ_BIN", os.path.join(ROOT, "build", "harness", "kvq"))
METHODS = ("rtn", "kivi", "kvquant", "rotatekv", "kvsink+kvquant", "akvq-vl")


def parse_table(text):
    """{(method, bits): (bits/elem, mean NLL, PPL)} of a kvq ppl / kvq.ppl table."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s", line)
        if m:
            rows[(m.group(1), int(m.group(2)))] = tuple(float(m.group(i)) for i in (3, 4, 5))
    return rows


def test_permutation():
    w = np.arange(8, dtype=np.float32).reshape(8, 1)  # two heads of d = 4
    got = kvq.llama2c.rotate_half_rows(w, 2).reshape(-1)
    check(list(got) == [0, 2, 1, 3, 4, 6, 5, 7],
          "llama2c: rows (2i, 2i+1) -> (i, i + d/2) per head", got)


def test_stories(tmp):
    model_dir = os.path.join(tmp, "stories260K")
    kvq.llama2c.convert(os.path.join(DATA, "stories260K.bin"), model_dir)
    common = ["--text", os.path.join(DATA, "tinystories-sample.txt"), "--method",
              ",".join(METHODS), "--bits", "2,4", "--max-tokens", "1020", "--window", "256",
              "--quiet"]
    c = subprocess.run([KVQ_BIN, "ppl", "--model", os.path.join(DATA, "stories260K.bin"),
                        "--tokenizer", os.path.join(DATA, "tok512.bin"), "--db", ""] + common,
                       capture_output=True, text=True)
    if not check(c.returncode == 0, "kvq ppl runs", c.stderr):
        return
    db = os.path.join(tmp, "hf.db")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = kvq.ppl.main(["--model", model_dir, "--llama2c-tokenizer",
                           os.path.join(DATA, "tok512.bin"), "--db", db, "--threads", "1"]
                          + common)
    if not check(rc == 0, "python -m kvq.ppl runs", out.getvalue()):
        return
    print(out.getvalue())
    cpp, hf = parse_table(c.stdout), parse_table(out.getvalue())
    check(len(cpp) == len(hf) == 1 + 2 * len(METHODS), "both tables list fp32 and 12 cases",
          (sorted(cpp), sorted(hf)))
    base_c, base_h = cpp[("fp32", 32)], hf[("fp32", 32)]
    # The tables print PPL to 3 decimals; the NLL (4 decimals) bounds it more tightly.
    rel = abs(np.exp(base_h[1]) / np.exp(base_c[1]) - 1)
    check(rel <= 1e-4 and abs(base_h[2] / base_c[2] - 1) <= 1e-4,
          "stories260K fp32: HF PPL within 1e-4 relative of kvq ppl", (base_h, base_c))
    for key in sorted(cpp):
        if key[0] == "fp32" or key not in hf:
            continue
        (bpe_c, nll_c, _), (bpe_h, nll_h, _) = cpp[key], hf[key]
        check(abs(nll_h - nll_c) <= TOLERANCE_NLL and abs(bpe_h - bpe_c) <= 0.01,
              f"stories260K {key[0]} b{key[1]}: NLL {nll_h} vs kvq ppl {nll_c} (tolerance "
              f"{TOLERANCE_NLL}), bits/element {bpe_h} vs {bpe_c}")
    # --mode prefill: rtn quantizes each token once on arrival, so a whole-chunk forward reads
    # the same reconstructions as decoding does (only the forward's rounding differs).
    pre = io.StringIO()
    with contextlib.redirect_stdout(pre):
        rc = kvq.ppl.main(["--model", model_dir, "--llama2c-tokenizer",
                           os.path.join(DATA, "tok512.bin"), "--db", "", "--threads", "1",
                           "--mode", "prefill", "--text",
                           os.path.join(DATA, "tinystories-sample.txt"), "--method", "rtn",
                           "--bits", "4", "--max-tokens", "1020", "--quiet"])
    prefill = parse_table(pre.getvalue())
    check(rc == 0 and abs(prefill[("fp32", 32)][1] - base_h[1]) <= 1e-4
          and abs(prefill[("rtn", 4)][1] - hf[("rtn", 4)][1]) <= TOLERANCE_NLL,
          "kvq.ppl --mode prefill: fp32 and rtn b4 NLL as decode's", (prefill, hf))
    r = subprocess.run([KVQ_BIN, "report", "accuracy", "--db", db], capture_output=True,
                       text=True)
    shown = [line for line in r.stdout.splitlines() if "ppl/stories260K" in line]
    check(r.returncode == 0 and len(shown) == 13,
          "kvq report accuracy lists the 13 kvq.ppl rows", r.stdout + r.stderr)


def tiny_model(kind):
    torch.manual_seed({"llama": 1, "mistral": 2, "qwen3_moe": 3}[kind])
    common = dict(vocab_size=64, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
                  eos_token_id=2, initializer_range=0.1)
    if kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(intermediate_size=96, head_dim=16, **common))
    elif kind == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(intermediate_size=96, head_dim=16,
                                                       sliding_window=None, **common))
    else:
        model = tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(
            intermediate_size=96, moe_intermediate_size=48, num_experts=6, num_experts_per_tok=2,
            decoder_sparse_step=1, mlp_only_layers=[], head_dim=16, norm_topk_prob=True,
            **common))
    return model.eval()


def decode(model, ids, cache):
    out = []
    with torch.inference_mode():
        for t in range(ids.shape[1]):
            out.append(model(input_ids=ids[:, t: t + 1], past_key_values=cache,
                             use_cache=True).logits[:, -1])
    return torch.stack(out, 1)


def test_tiny(kind):
    model = tiny_model(kind)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 64, (2, 33), generator=gen)
    ids[:, 0] = 1
    want = decode(model, ids, tf.DynamicCache())
    got = decode(model, ids, kvq.hf.KvqCache(model, "fp32"))
    check(same_bits(got.numpy(), want.numpy()), f"{kind}: KvqCache fp32 = DynamicCache bitwise")

    layers = kvq.hf.record(model, ids[0], one_token_at_a_time=True)
    for method in METHODS:
        params = kvq.MethodParams(method, 4, group=16, head_group=2)  # H_kv = 2
        calibration = kvq.calibrate(layers, params)
        cache = kvq.hf.KvqCache(model, params, calibration=calibration)
        logits = decode(model, ids[:1], cache)
        check(bool(torch.isfinite(logits).all()), f"{kind} {method}: decodes, finite logits")
        if method in ("rotatekv", "kvsink+kvquant"):
            continue  # online pivots / sinks decided per token differ from whole-layer ones
        applied = kvq.apply_method(layers[0], 0, len(layers), calibration, params)
        k = cache.layers[0].keys[0].transpose(0, 1).numpy()  # [T, H, d], model order
        v = cache.layers[0].values[0].transpose(0, 1).numpy()
        order = kvq.hf._kvq_order(k.shape[-1]).numpy()
        want_k, want_v = np.empty_like(k), np.empty_like(v)
        want_k[..., order], want_v[..., order] = applied.k_dequant(), applied.v_dequant()
        check(same_bits(v, want_v), f"{kind} {method} b4: layer-0 V = kvq.apply_method's")
        if params.uses_pre_rope_k:
            err = np.abs(k - want_k).max() / np.abs(want_k).max()
            check(err <= 2e-6, f"{kind} {method} b4: layer-0 K within 2e-6 of apply_method's "
                  "(model's RoPE vs kvq's)", err)
        else:
            check(same_bits(k, want_k), f"{kind} {method} b4: layer-0 K = kvq.apply_method's")


def test_errors():
    model = tiny_model("llama")
    try:
        kvq.hf.KvqCache(model, "rtn", backend="avx2")
        check(False, "KvqCache backend avx2 refused")
    except kvq.Error as e:
        check("no incremental" in str(e), "KvqCache backend avx2 refused with the reason", e)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = kvq.ppl.main(["--model", "/nonexistent", "--text", "/nonexistent.txt", "--method",
                           "rtn", "--db", ""])
    check(rc == 2 and "--text /nonexistent.txt: no such file" in err.getvalue(),
          "kvq.ppl: a missing file exits 2 naming it", err.getvalue())


def main():
    torch.set_num_threads(1)
    test_permutation()
    test_errors()
    for kind in ("llama", "mistral", "qwen3_moe"):
        test_tiny(kind)
    test_python.test_torch(np.random.default_rng(7))
    with tempfile.TemporaryDirectory() as tmp:
        test_stories(tmp)
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
