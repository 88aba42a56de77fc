#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/fuzz_llama2.cpp (fuzz/corpus/llama2/*.seed).

Each seed is one fuzz input: u32 little-endian n, n bytes of a llama2.c checkpoint (version 0,
docs/design.md format), then a llama2.c tokenizer (the rest). Tiny configs only
(dim 4..8, one or two layers): valid pairs, so the fuzzer starts from inputs that reach the
decoder and the encoder, and broken ones, one fault each. The files are committed; this script
regenerates them byte for byte (python3 fuzz/corpus/llama2/make_seeds.py).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def weights(count):
    """Deterministic small weights that differ, so greedy decoding is not all ties."""
    return [((i * 37) % 101 - 50) / 500.0 for i in range(count)]


def checkpoint_floats(dim, hidden, layers, heads, kv_heads, vocab, seq_len):
    head = dim // heads
    kv = head * kv_heads
    per_layer = dim + dim * dim + 2 * kv * dim + dim * dim + dim + 3 * hidden * dim
    classifier = vocab * dim if vocab < 0 else 0  # negative vocab: untied classifier follows
    return abs(vocab) * dim + layers * per_layer + dim + seq_len * head + abs(classifier)


def checkpoint(dim, hidden, layers, heads, kv_heads, vocab, seq_len, floats=None):
    header = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq_len)
    if floats is None:
        floats = checkpoint_floats(dim, hidden, layers, heads, kv_heads, vocab, seq_len)
    return header + f32(weights(floats))


def tokenizer(count, max_len=8, merges=()):
    """<unk>, BOS, EOS, the 256 <0xHH> byte pieces, then ' ' and `merges` (piece, score),
    padded with single bytes up to `count` records."""
    records = [(b"<unk>", 0.0), (b"\n<s>\n", 0.0), (b"\n</s>\n", 0.0)]
    records += [(b"<0x%02X>" % b, 0.0) for b in range(256)]
    records += [(b" ", -1.0)] + [(p.encode(), s) for p, s in merges]
    records += [(bytes([i % 256]), -100.0 - i) for i in range(len(records), count)]
    records = records[:count]
    out = struct.pack("<i", max_len)
    for piece, score in records:
        out += struct.pack("<fi", score, len(piece)) + piece
    return out


def seed(name, ckpt, tok):
    with open(os.path.join(HERE, name + ".seed"), "wb") as f:
        f.write(struct.pack("<I", len(ckpt)) + ckpt + tok)


MERGES = [("he", 5.0), ("ll", 4.0), ("hell", 6.0), ("o", 1.0), (" t", 3.0), ("im", 2.0),
          ("e,", 0.5), ("\xc3\xa9", 0.2)]
GOOD = dict(dim=4, hidden=8, layers=1, heads=2, kv_heads=1, vocab=260, seq_len=4)
good_ckpt = checkpoint(**GOOD)
good_tok = tokenizer(260)

# Valid pairs.
seed("good", good_ckpt, good_tok)
merge_tok = tokenizer(268, merges=MERGES)
seed("merges_untied", checkpoint(4, 8, 1, 2, 1, -268, 4), merge_tok)
seed("gqa_two_layers", checkpoint(8, 12, 2, 4, 2, 268, 6), merge_tok)
seed("seq_len_one", checkpoint(4, 4, 1, 1, 1, 260, 1), good_tok)

# Broken checkpoints (with a good tokenizer), one fault each.
n_good = checkpoint_floats(**GOOD)
seed("ckpt_size_mismatch", checkpoint(**GOOD, floats=n_good - 3), good_tok)
seed("ckpt_zero_dim", checkpoint(0, 8, 1, 2, 1, 260, 4, floats=8), good_tok)
seed("ckpt_negative_layers", checkpoint(4, 8, -1, 2, 1, 260, 4, floats=8), good_tok)
seed("ckpt_short_header", struct.pack("<3i", 4, 8, 1), good_tok)
seed("ckpt_heads_not_dividing", checkpoint(6, 8, 1, 4, 1, 260, 4, floats=8), good_tok)
seed("ckpt_kv_not_dividing", checkpoint(8, 8, 1, 4, 3, 260, 4, floats=8), good_tok)
seed("ckpt_odd_head_dim", checkpoint(6, 8, 1, 2, 1, 260, 4, floats=8), good_tok)
seed("ckpt_overflow", checkpoint(1 << 30, 1 << 30, 1, 2, 2, 260, 4, floats=8), good_tok)
seed("ckpt_int_min_vocab", checkpoint(4, 8, 1, 2, 1, -(1 << 31), 4, floats=8), good_tok)
inf_ckpt = bytearray(good_ckpt)
inf_ckpt[28 + 4 * 5:28 + 4 * 6] = f32([float("inf")])
seed("ckpt_inf_weight", bytes(inf_ckpt), good_tok)

# Broken tokenizers (with a good checkpoint).
seed("tok_259", good_ckpt, tokenizer(259))
seed("tok_truncated", good_ckpt, good_tok[:-3])
seed("tok_negative_max_len", good_ckpt, struct.pack("<i", -1) + good_tok[4:])
seed("tok_length_over_max", good_ckpt, tokenizer(260, max_len=4))
nan_tok = bytearray(good_tok)
nan_tok[4:8] = f32([float("nan")])
seed("tok_nan_score", good_ckpt, bytes(nan_tok))
seed("tok_empty", good_ckpt, b"")
