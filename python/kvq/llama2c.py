"""llama2.c checkpoint (version 0, the format kvq ppl reads) -> a Hugging Face LlamaForCausalLM
directory: config.json + model.safetensors, fp32, loadable with from_pretrained.

    python -m kvq.llama2c data/stories260K.bin OUT_DIR

The file: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size — negative when
the classifier is not shared — seq_len), then fp32 token_embedding, rms_att, wq, wk, wv, wo,
rms_ffn, w1, w2, w3 (each for all layers), rms_final, the RoPE tables (skipped) and the
classifier when unshared. llama2.c rotates channel pairs (2i, 2i+1) of each head, Hugging Face
pairs (i, i + d/2) ("rotate_half"): wq and wk rows are permuted per head (HF's own
convert_llama_weights_to_hf permutation), so q . k, and the model, are unchanged. Needs numpy
only; the tokenizer stays llama2.c's (python -m kvq.ppl --llama2c-tokenizer tok512.bin).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np


def _error(message):
    from . import _kvq
    return _kvq.Error(message)


def read_checkpoint(path):
    """(config dict, {name: fp32 array}) of a llama2.c version-0 checkpoint."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise _error(f"checkpoint {path}: {e.strerror}") from e
    if len(raw) < 28:
        raise _error(f"checkpoint {path}: {len(raw)} bytes, too short for the 7-int32 header")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, layers, heads, kv_heads, vocab, seq_len) <= 0 or dim % heads or \
            heads % kv_heads or (dim // heads) % 2:
        header = (dim, hidden, layers, heads, kv_heads, vocab, seq_len)
        raise _error(f"checkpoint {path}: header {header} is not a llama2.c version-0 model")
    head_dim = dim // heads
    kv = kv_heads * head_dim
    shapes = [("tok_embeddings", (vocab, dim)), ("rms_att", (layers, dim)),
              ("wq", (layers, dim, dim)), ("wk", (layers, kv, dim)), ("wv", (layers, kv, dim)),
              ("wo", (layers, dim, dim)), ("rms_ffn", (layers, dim)),
              ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)),
              ("w3", (layers, hidden, dim)), ("rms_final", (dim,)),
              ("freq_cis", (seq_len, head_dim))]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    need = 28 + 4 * sum(int(np.prod(s)) for _, s in shapes)
    if need != len(raw):
        raise _error(f"checkpoint {path}: file has {len(raw)} bytes, its header implies {need}")
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    weights, at = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        weights[name] = data[at: at + n].reshape(shape)
        at += n
    config = dict(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads,
                  n_kv_heads=kv_heads, vocab_size=vocab, seq_len=seq_len, shared=shared)
    return config, weights


def rotate_half_rows(w, heads):
    """Rows of wq / wk from llama2.c's pair order (2i, 2i+1) to HF's (i, i + d/2), per head."""
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, d // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def hf_tensors(config, w):
    """{HF LlamaForCausalLM parameter name: fp32 array}."""
    out = {"model.embed_tokens.weight": w["tok_embeddings"], "model.norm.weight": w["rms_final"]}
    for i in range(config["n_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = w["rms_att"][i]
        out[p + "self_attn.q_proj.weight"] = rotate_half_rows(w["wq"][i], config["n_heads"])
        out[p + "self_attn.k_proj.weight"] = rotate_half_rows(w["wk"][i], config["n_kv_heads"])
        out[p + "self_attn.v_proj.weight"] = w["wv"][i]
        out[p + "self_attn.o_proj.weight"] = w["wo"][i]
        out[p + "post_attention_layernorm.weight"] = w["rms_ffn"][i]
        out[p + "mlp.gate_proj.weight"] = w["w1"][i]
        out[p + "mlp.down_proj.weight"] = w["w2"][i]
        out[p + "mlp.up_proj.weight"] = w["w3"][i]
    if not config["shared"]:
        out["lm_head.weight"] = w["wcls"]
    return out


def hf_config(config):
    """config.json of the converted model (kvq's llama2.c forward: RMSNorm eps 1e-5, RoPE theta
    10000, SwiGLU, no biases)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": config["dim"], "intermediate_size": config["hidden_dim"],
        "num_hidden_layers": config["n_layers"], "num_attention_heads": config["n_heads"],
        "num_key_value_heads": config["n_kv_heads"], "head_dim": config["dim"] // config["n_heads"],
        "vocab_size": config["vocab_size"], "max_position_embeddings": config["seq_len"],
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": config["shared"],
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }


def write_safetensors(path, tensors, metadata=None):
    """A safetensors file of fp32 arrays (the format's header, then the raw little-endian data)."""
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset,
                                                                                  offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def convert(checkpoint, out_dir):
    """Writes out_dir/config.json and out_dir/model.safetensors; returns the config dict."""
    config, weights = read_checkpoint(checkpoint)
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), hf_tensors(config, weights),
                      {"format": "pt", "source": os.path.basename(checkpoint)})
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config(config), f, indent=2)
    return config


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m kvq.llama2c", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="llama2.c version-0 checkpoint (.bin)")
    p.add_argument("out_dir", help="output directory (config.json, model.safetensors)")
    args = p.parse_args(argv)
    try:
        c = convert(args.checkpoint, args.out_dir)
    except ValueError as e:
        print(f"llama2c: {e}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint} -> {args.out_dir}: LlamaForCausalLM dim {c['dim']}, "
          f"{c['n_layers']} layers, {c['n_heads']}/{c['n_kv_heads']} heads, vocab "
          f"{c['vocab_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
