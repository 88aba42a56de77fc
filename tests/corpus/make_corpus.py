#!/usr/bin/env python3
"""Writes the hostile-input corpus (tests/corpus/*) that tests/test_corpus.cpp feeds to `kvq`.

The files are committed; this script documents how each was made and regenerates them
byte for byte (python3 tests/corpus/make_corpus.py). cases.tsv says what each must produce.
"""
import json
import os
import sqlite3
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def st_raw(header_text, data=b"", header_len=None):
    """safetensors bytes: u64 little-endian header length, header, data."""
    text = header_text.encode()
    n = len(text) if header_len is None else header_len
    return struct.pack("<Q", n) + text + data


def st(tensors, metadata=None):
    """A well-formed safetensors file of (name, dtype, shape, bytes) in order."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    return st_raw(json.dumps(header, separators=(",", ":")), data)


def f32(values):
    return struct.pack("<%df" % len(values), *values)


# A tiny recording [T=4, H=1, d=4]: values chosen so every method has something to quantize.
KV = f32([float((i * 7) % 5) - 2.0 for i in range(16)])
KV_SHAPE = [4, 1, 4]

# --- safetensors -----------------------------------------------------------------------------
write("st_short_file.safetensors", b"\x05\x00\x00")
write("st_header_beyond_file.safetensors", st_raw("{}", header_len=4096))
write("st_header_over_limit.safetensors", st_raw("{}", header_len=(100 << 20) + 1))
write("st_header_not_json.safetensors", st_raw('{"layers.0.v": {"dtype": "F32",'))
write("st_header_not_object.safetensors", st_raw("[1, 2, 3]"))
write("st_offsets_out_of_range.safetensors",
      st_raw('{"layers.0.v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
             '"layers.0.k":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', f32([1, 2, 3])))
write("st_offsets_reversed.safetensors",
      st_raw('{"x":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}', f32([1, 2, 3])))
write("st_offsets_negative.safetensors",
      st_raw('{"x":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', f32([1])))
write("st_overlap.safetensors",
      st_raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
             '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', f32([1, 2, 3])))
write("st_bytes_disagree.safetensors",
      st_raw('{"layers.0.v":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}', f32([1, 2, 3])))
write("st_dtype_unknown.safetensors",
      st_raw('{"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}', f32([1, 2])))
write("st_shape_negative.safetensors",
      st_raw('{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', f32([1])))
write("st_shape_float.safetensors",
      st_raw('{"x":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}', f32([1])))
write("st_shape_overflow.safetensors",
      st_raw('{"x":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}}',
             f32([1])))
write("st_bytes_overflow.safetensors",
      st_raw('{"x":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,4]}}',
             f32([1])))
write("st_duplicate_name.safetensors",
      st_raw('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
             '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32([1, 2])))
write("st_extra_key.safetensors",
      st_raw('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"bias":1}}', f32([1])))
write("st_metadata_not_string.safetensors",
      st_raw('{"__metadata__":{"model":7},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
             f32([1])))
# Well-formed files that `kvq apply` must refuse for what they hold.
write("st_missing_k.safetensors", st([("layers.0.v", "F32", KV_SHAPE, KV)]))
write("st_no_layers.safetensors", st([("other", "F32", [1], f32([1]))]))
write("st_shape_disagree.safetensors",
      st([("layers.0.k", "F32", [4, 2, 2], KV), ("layers.0.v", "F32", KV_SHAPE, KV)]))
write("st_v_not_3d.safetensors",
      st([("layers.0.k", "F32", [16], KV), ("layers.0.v", "F32", [16], KV)]))
write("st_nan.safetensors",
      st([("layers.0.k", "F32", KV_SHAPE, f32([float("nan")] + [0.0] * 15)),
          ("layers.0.v", "F32", KV_SHAPE, KV)]))
write("st_zero_tokens.safetensors",
      st([("layers.0.k", "F32", [0, 1, 4], b""), ("layers.0.v", "F32", [0, 1, 4], b"")]))
write("st_zero_head_dim.safetensors",
      st([("layers.0.k", "F32", [4, 1, 0], b""), ("layers.0.v", "F32", [4, 1, 0], b"")]))
write("st_k_wrong_dtype.safetensors",
      st([("layers.0.k", "I32", KV_SHAPE, struct.pack("<16i", *range(16))),
          ("layers.0.v", "F32", KV_SHAPE, KV)]))
write("st_modality_wrong.safetensors",
      st([("layers.0.k", "F32", KV_SHAPE, KV), ("layers.0.v", "F32", KV_SHAPE, KV),
          ("modality", "U8", [3], b"\x00\x01\x00")]))
# A valid one-layer recording: `kvq apply` with it as both --in and --out must refuse to write.
write("st_out_is_in.safetensors", st([("layers.0.k", "F32", KV_SHAPE, KV),
                                      ("layers.0.v", "F32", KV_SHAPE, KV)]))
# Every tensor a layer's ops read, with 0 tokens (rotate_k and attention_decode read token 0).
write("st_zero_token_recording.safetensors",
      st([("layers.0." + w, "F32", [0, 4, 8], b"") for w in ("k", "k_pre_rope", "v", "q")]))
# Two layers of what `kvq sinks` reads: its ground truth averages layers 2 and above (needs 3).
SINK_SHAPE = [4, 1, 4]
write("st_two_layers.safetensors",
      st([("layers.%d.%s" % (l, w), "F32", SINK_SHAPE, KV) for l in range(2) for w in ("q", "k")]
         + [("layers.%d.hidden_in" % l, "F32", [4, 4], KV) for l in range(2)]))
# Finite values near the fp32 limit: the FWHT of rotatekv's key rotation (g * d = 4 * 8) sums 32
# of them, an overflow inside the operation rather than a non-finite input.
BIG = f32([3e37] * 64)
write("st_overflow_inside.safetensors",
      st([("layers.0." + w, "F32", [2, 4, 8], BIG) for w in ("k", "k_pre_rope", "v")]
         + [("layers.0.hidden_in", "F32", [2, 32], BIG)]))
# 10000 empty tensors, the first repeated at the end: the header parse is linear
# (quadratic, 20000 took 7 s) and its duplicate check still reaches the last key.
write("st_many_tensors.safetensors",
      st_raw("{" + ",".join('"p%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % (i % 10000)
                            for i in range(10001)) + "}"))
# Allocation bombs in a few hundred bytes: an expert count, an expert id (ids size the tables).
ROUTING = [("layers.0.experts.ids", "I32", [2, 1], struct.pack("<2i", 0, 1)),
           ("layers.0.experts.down_absmax", "F32", [2, 1], f32([1, 2]))]
write("st_experts_bomb.safetensors", st(ROUTING, metadata={"num_experts": "1000000000"}))
write("st_expert_id_bomb.safetensors",
      st([("layers.0.experts.ids", "I32", [2, 1], struct.pack("<2i", 0, 2147483647)),
          ROUTING[1]]))
# A recording name longer than a file name may be (found by fuzz_scenario: an exception, not
# kvq::Error, left the loader).
with open(os.path.join(HERE, "toml_input_name_too_long.toml"), "w") as f:
    f.write("# Hostile scenario: its input's file name has 300 characters.\n[[case]]\n"
            "op = \"quantize\"\ninput = \"%s.safetensors\"\n" % ("x" * 300))
# A scenario whose two sweeps expand to 400 x 400 = 160000 cases (the limit is 100000).
with open(os.path.join(HERE, "toml_sweep_bomb.toml"), "w") as f:
    f.write("# Hostile scenario: its sweeps expand to 160000 cases.\n[[case]]\nop = \"fwht\"\n"
            "n = 4\ntokens = [%s]\nseed = [%s]\n" % (", ".join(map(str, range(1, 401))),
                                                    ", ".join(map(str, range(1, 401)))))

# --- llama2.c checkpoints and tokenizers format) ----------------
def checkpoint_floats(dim, hidden, layers, heads, kv_heads, vocab, seq_len):
    head = dim // heads
    kv = head * kv_heads
    per_layer = dim + dim * dim + 2 * kv * dim + dim * dim + dim + 3 * hidden * dim
    return vocab * dim + layers * per_layer + dim + seq_len * head


def checkpoint(dim, hidden, layers, heads, kv_heads, vocab, seq_len, floats=None, fill=0.01):
    header = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq_len)
    if floats is None:
        floats = checkpoint_floats(dim, hidden, layers, heads, kv_heads, vocab, seq_len)
    return header + f32([fill] * floats)


def tokenizer(count, max_len=4):
    out = struct.pack("<i", max_len)
    for i in range(count):
        piece = b"<unk>"[:max_len] if i == 0 else bytes([i % 256])
        out += struct.pack("<fi", 0.0, len(piece)) + piece
    return out


GOOD = dict(dim=4, hidden=8, layers=1, heads=2, kv_heads=1, vocab=260, seq_len=4)
n_good = checkpoint_floats(**GOOD)
write("ckpt_size_mismatch.bin", checkpoint(**GOOD, floats=n_good - 3))
write("ckpt_zero_dim.bin", checkpoint(0, 8, 1, 2, 1, 260, 4, floats=8))
write("ckpt_negative_layers.bin", checkpoint(4, 8, -1, 2, 1, 260, 4, floats=8))
write("ckpt_short_header.bin", struct.pack("<3i", 4, 8, 1))
write("ckpt_heads_not_dividing.bin", checkpoint(6, 8, 1, 4, 1, 260, 4, floats=8))
write("ckpt_overflow.bin", checkpoint(1 << 30, 1 << 30, 1, 2, 2, 260, 4, floats=8))
write("ckpt_good.bin", checkpoint(**GOOD))
nan_ckpt = bytearray(checkpoint(**GOOD))
nan_ckpt[28 + 4 * 5:28 + 4 * 6] = f32([float("inf")])
write("ckpt_inf_weight.bin", bytes(nan_ckpt))
write("tok_259.bin", tokenizer(259))      # the checkpoint's vocabulary is 260
write("tok_260.bin", tokenizer(260))
write("tok_truncated.bin", tokenizer(260)[:-3])
write("text.txt", b"hello hostile world\n")
write("text_invalid_utf8.txt", b"hello \xff\xfe hostile \xe2\x82 world\n")  # byte 6 starts no character

# --- results databases (SQLite) ---------------------------------------------------------------
def database(name, sql):
    path = os.path.join(HERE, name)
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.executescript(sql)
    db.commit()
    db.close()


# An empty kvq results store (results/schema.sql, schema version 1) that reports must not change.
with open(os.path.join(HERE, "..", "..", "results", "schema.sql")) as f:
    database("db_results.db", f.read() + "PRAGMA user_version = 1;")
# Some other program's database: kvq must not add its tables to it.
database("db_foreign.db", "CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine');")
