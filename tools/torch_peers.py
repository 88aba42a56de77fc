#!/usr/bin/env python3
"""PyTorch peers of the CUDA benchmarks (bench/bench_cuda.cpp), on the same device, written to
the same results store as backend "torch" under the same case names, so a query can join them.

    python3 tools/torch_peers.py --db results/kvq.db [--quick]

Peers: eager FWHT (x @ H_n / sqrt(n), fp32, the matmul form), eager quantize + pack 2-bit
(min/max per 128-group, codes, 4 codes per byte), rotate_quantize (H_512 matmul + reorder +
the same quantizer), and SDPA fp16 decode at 4K / 32K / 128K tokens, B = 8, 32 heads, d = 128.
Each is timed with CUDA events around single calls after warm-up; median over repetitions,
spread = (max - min) / median. The decode cases also record peak_device_memory: the peak of
torch's allocator from before K, V and q are allocated to after one SDPA call (bytes), beside
kv_cache_bytes (K + V fp16), as bench_cuda does for the 2-bit cache. Only the standard library
and torch are used.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import socket
import sqlite3
import statistics
import sys

import torch


def timeit(fn, reps=30, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e-3)
    med = statistics.median(times)
    return med, (max(times) - min(times)) / med, len(times)


def hadamard(n, device):
    h = torch.ones(1, 1, dtype=torch.float32)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / n ** 0.5).to(device)


def quantize_pack_2bit(x, group=128, clip=1.0):
    """x: [rows, cols] fp32 -> (packed uint8 [rows*cols/4], scale fp16, zero fp16)."""
    g = x.reshape(-1, group)
    lo = g.amin(dim=1, keepdim=True) * clip
    hi = g.amax(dim=1, keepdim=True) * clip
    scale = ((hi - lo) / 3.0).to(torch.float16)
    zero = lo.to(torch.float16)
    s = scale.float()
    q = torch.where(s == 0, torch.zeros_like(g), torch.round((g - zero.float()) / s)).clamp_(0, 3)
    q = q.to(torch.uint8).reshape(-1, 4)
    packed = q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)
    return packed, scale, zero


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="results/kvq.db")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    rows = []  # (case name, op, params, bytes read+written, seconds, spread, reps, extras)

    def add(case, op, params, nbytes, fn, extras=()):
        t, spread, reps = timeit(fn)
        rows.append((case, op, json.dumps(params), nbytes, t, spread, reps, list(extras)))
        print(f"{case:52s} torch {t * 1e6:10.1f} us {nbytes / t / 1e9:9.1f} GB/s", flush=True)

    # Device copy of 512 MiB (the same-run copy bandwidth of the torch process).
    src = torch.empty(1 << 27, dtype=torch.float32, device=dev).fill_(1.0)
    dst = torch.empty_like(src)
    add("torch/copy/512MiB", "memcpy", {"bytes": src.numel() * 4}, 2 * src.numel() * 4,
        lambda: dst.copy_(src))
    del src, dst

    count = 1 << (22 if args.quick else 26)
    for n in (128, 256, 512, 1024, 2048, 4096):
        x = torch.randn(count // n, n, device=dev)
        h = hadamard(n, dev)
        out = torch.empty_like(x)
        add(f"fwht/n{n}/f32/{count * 4 >> 20}MiB", "fwht", {"n": n, "values": count},
            8.0 * count, lambda x=x, h=h, out=out: torch.matmul(x, h, out=out))
        del x, h, out

    tokens = 8192 if args.quick else 65536
    cols = 32 * 128
    kv = torch.randn(tokens, cols, device=dev).to(torch.float16)
    nbytes_q = tokens * cols * 2 + tokens * cols / 4 + tokens * cols / 128 * 4
    h512 = hadamard(512, dev)
    h128 = hadamard(128, dev)
    perm = torch.randperm(cols, device=dev)

    def rq_grouped():
        r = torch.matmul(kv.float().reshape(-1, 512), h512).reshape(tokens, cols)[:, perm]
        return quantize_pack_2bit(r, clip=0.8)

    def rq_per_head():
        r = torch.matmul(kv.float().reshape(-1, 128), h128).reshape(tokens, cols)
        return quantize_pack_2bit(r, clip=0.8)

    add(f"rotate_quantize/key_grouped/T{tokens}/H32/d128/f16/b2", "rotate_quantize",
        {"tokens": tokens, "rotation": "key_grouped", "bits": 2}, nbytes_q, rq_grouped)
    add(f"rotate_quantize/per_head/T{tokens}/H32/d128/f16/b2", "rotate_quantize",
        {"tokens": tokens, "rotation": "per_head", "bits": 2}, nbytes_q, rq_per_head)
    kv32 = kv.float()
    add(f"quantize/T{tokens}/H32/d128/f32/b2", "quantize", {"tokens": tokens, "bits": 2},
        tokens * cols * 4 + tokens * cols / 4 + tokens * cols / 128 * 4,
        lambda: quantize_pack_2bit(kv32))
    del kv, kv32

    batch, heads, d = 8, 32, 128
    for t in ((4096,) if args.quick else (4096, 32768, 131072)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        k = torch.randn(batch, heads, t, d, device=dev, dtype=torch.float16)
        v = torch.randn(batch, heads, t, d, device=dev, dtype=torch.float16)
        q = torch.randn(batch, heads, 1, d, device=dev, dtype=torch.float16)
        f = torch.nn.functional.scaled_dot_product_attention
        f(q, k, v)
        torch.cuda.synchronize()
        memory = [("peak_device_memory", torch.cuda.max_memory_allocated() - base, "bytes"),
                  ("kv_cache_bytes", 2 * k.numel() * 2, "bytes")]
        add(f"attention_decode/T{t}/B{batch}/H32/d128/b2", "attention_decode",
            {"tokens": t, "batch": batch, "heads": heads, "head_dim": d, "dtype": "f16",
             "peer": "sdpa"}, 2.0 * k.numel() * 2 + 4.0 * q.numel(),
            lambda q=q, k=k, v=v: f(q, k, v), memory)
        del k, v, q
        torch.cuda.empty_cache()

    os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    db = sqlite3.connect(args.db, timeout=30)
    here = os.path.abspath(__file__)
    with open(here, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with db:
        cur = db.execute(
            "INSERT INTO runs (started, finished, status, git_sha, host, cpu_flags, compiler, "
            "build_type, gpu, scenario, scenario_hash, command) VALUES "
            "(?, ?, 'complete', 'unknown', ?, '', ?, 'eager', ?, 'tools/torch_peers.py', ?, ?)",
            (now, now, socket.gethostname(), f"torch {torch.__version__} / python "
             f"{platform.python_version()}", name, digest, " ".join(sys.argv)))
        run_id = cur.lastrowid
        for case, op, params, nbytes, t, spread, reps, extras in rows:
            c = db.execute("INSERT INTO cases (run_id, name, op, params_json, repro) VALUES "
                           "(?, ?, ?, ?, ?)", (run_id, case, op, params,
                                               "python3 tools/torch_peers.py"))
            cid = c.lastrowid
            backend = "torch"
            db.execute("INSERT INTO measurements (case_id, backend, metric, value, unit, "
                       "repetitions, spread) VALUES (?, ?, 'time', ?, 's', ?, ?)",
                       (cid, backend, t, reps, spread))
            db.execute("INSERT INTO measurements (case_id, backend, metric, value, unit, "
                       "repetitions, spread) VALUES (?, ?, 'bandwidth', ?, 'GB/s', ?, ?)",
                       (cid, backend, nbytes / t / 1e9, reps, spread))
            for metric, value, unit in extras:
                db.execute("INSERT INTO measurements (case_id, backend, metric, value, unit, "
                           "repetitions, spread) VALUES (?, ?, ?, ?, ?, 1, 0)",
                           (cid, backend, metric, value, unit))
    print(f"torch_peers: {len(rows)} cases written to {args.db} (run {run_id})")


if __name__ == "__main__":
    main()
