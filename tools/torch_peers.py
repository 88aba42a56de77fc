#!/usr/bin/env python3
"""PyTorch peers of the CUDA benchmarks (bench/bench_cuda.cpp), on the same device, written to
the same results store as backend "torch" under the same case names, so a query can join them.

    python3 tools/torch_peers.py --db results/kvq.db [--quick]

Peers: eager FWHT (x @ H_n / sqrt(n), fp32, the matmul form), eager quantize + pack 2-bit
(min/max per 128-group, codes, 4 codes per byte), rotate_quantize (H_512 matmul + reorder +
the same quantizer), and SDPA fp16 decode at 4K / 32K / 128K tokens, B = 8, 32 heads, d = 128.
The decode cases run at B = 8 and at B = 1 (the latency case).

With --kivi DIR (a checkout of KIVI's quant/ folder, github.com/jy-yuan/KIVI: csrc/, matmul.py,
new_pack.py), KIVI's own CUDA gemv kernels are built here with torch.utils.cpp_extension.load and
timed at the same shapes as backend "kivi": a decode step as KIVI's llama_kivi.py runs it
(matmul.cuda_bmm_fA_qB_outer for the quantized K and V, which re-lays both out on every call;
fp16 residual of 128 tokens; fp32 softmax), and as backend "kivi_gemv" the same step with the
operands already in the kernels' layout (the kernels' best case). KIVI's configuration: 2 bits,
group 32 (K per channel over tokens, V per token over channels). Its Triton quantize-and-pack
(new_pack.triton_quantize_and_pack_along_last_dim) is timed on the rotate_quantize input with
G = 128 along the channels (no rotation, no reorder: less work than kvq's fused path).
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

try:
    import torch
except ImportError:  # reported by main() as one line, exit 2
    torch = None


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


class Kivi:
    """KIVI's gemv extension and its Python modules (matmul.py imports the extension by name)."""

    def __init__(self, gemv, matmul, pack):
        self.gemv, self.matmul, self.pack = gemv, matmul, pack


def load_kivi(folder):
    from torch.utils.cpp_extension import load
    import importlib
    folder = os.path.abspath(folder)
    gemv = load(name="kivi_gemv",
                sources=[os.path.join(folder, "csrc", "pybind.cpp"),
                         os.path.join(folder, "csrc", "gemv_cuda.cu")],
                extra_cflags=["-O3", "-std=c++17", "-DENABLE_BF16"],
                extra_cuda_cflags=["-O3", "-std=c++17", "-DENABLE_BF16",
                                   "-U__CUDA_NO_HALF_OPERATORS__",
                                   "-U__CUDA_NO_HALF_CONVERSIONS__",
                                   "-U__CUDA_NO_BFLOAT16_OPERATORS__",
                                   "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                                   "-U__CUDA_NO_BFLOAT162_OPERATORS__",
                                   "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                                   "--expt-relaxed-constexpr", "--expt-extended-lambda",
                                   "--use_fast_math"],
                verbose=False)
    sys.modules["kivi_gemv"] = gemv
    sys.path.insert(0, folder)
    matmul = importlib.import_module("matmul")
    pack = importlib.import_module("new_pack")
    print(f"kivi: built {gemv.__file__}", flush=True)
    return Kivi(gemv, matmul, pack)


def kivi_decode(add, kivi, batch, heads, d, t, dev, group=32, residual=128, bits=2):
    """One decode step of KIVI's llama_kivi.py attention (quantized part + fp16 residual)."""
    tq = t - residual
    per_int = 32 // bits
    k_code = torch.randint(-2**31, 2**31 - 1, (batch, heads, d, tq // per_int), device=dev,
                           dtype=torch.int32)
    k_scale = (torch.rand(batch, heads, d, tq // group, device=dev) * 0.05).half()
    k_mn = (torch.rand(batch, heads, d, tq // group, device=dev) * -0.1).half()
    v_code = torch.randint(-2**31, 2**31 - 1, (batch, heads, tq, d // per_int), device=dev,
                           dtype=torch.int32)
    v_scale = (torch.rand(batch, heads, tq, d // group, device=dev) * 0.05).half()
    v_mn = (torch.rand(batch, heads, tq, d // group, device=dev) * -0.1).half()
    k_full = torch.randn(batch, heads, residual, d, device=dev, dtype=torch.float16)
    v_full = torch.randn(batch, heads, residual, d, device=dev, dtype=torch.float16)
    q = torch.randn(batch, heads, 1, d, device=dev, dtype=torch.float16)
    mm = kivi.matmul

    def softmax(s_quant, s_full):
        s = torch.cat([s_quant, s_full], dim=-1) / d ** 0.5
        return torch.softmax(s, dim=-1, dtype=torch.float32).to(torch.float16)

    def step():  # as llama_kivi.py: cuda_bmm_fA_qB_outer re-lays out K and V on each call
        p = softmax(mm.cuda_bmm_fA_qB_outer(group, q, k_code, k_scale, k_mn, bits),
                    torch.matmul(q, k_full.transpose(2, 3)))
        o = mm.cuda_bmm_fA_qB_outer(group, p[:, :, :, :-residual].contiguous(), v_code, v_scale,
                                    v_mn, bits)
        return o + torch.matmul(p[:, :, :, -residual:], v_full)

    # The same operands already in the layout gemv_forward_cuda_outer_dim reads.
    flat = batch * heads
    kt = k_code.reshape(flat, d, -1).transpose(1, 2).contiguous()
    kst = k_scale.reshape(flat, d, -1).transpose(1, 2).contiguous()
    kmt = k_mn.reshape(flat, d, -1).transpose(1, 2).contiguous()
    vt = v_code.reshape(flat, tq, -1).transpose(1, 2).contiguous()
    vst = v_scale.reshape(flat, tq, -1).transpose(1, 2).contiguous()
    vmt = v_mn.reshape(flat, tq, -1).transpose(1, 2).contiguous()
    g = kivi.gemv.gemv_forward_cuda_outer_dim

    def step_kernels():
        sq = g(q.reshape(flat, 1, d), kt, kst, kmt, bits, group, heads, heads)
        p = softmax(sq.view(batch, heads, 1, tq), torch.matmul(q, k_full.transpose(2, 3)))
        o = g(p[:, :, :, :-residual].reshape(flat, 1, tq), vt, vst, vmt, bits, group, heads,
              heads)
        return o.view(batch, heads, 1, d) + torch.matmul(p[:, :, :, -residual:], v_full)

    cache = sum(x.numel() * x.element_size()
                for x in (k_code, k_scale, k_mn, v_code, v_scale, v_mn, k_full, v_full))
    params = {"tokens": t, "batch": batch, "heads": heads, "head_dim": d, "bits": bits,
              "group": group, "residual": residual}
    name = f"attention_decode/T{t}/B{batch}/H32/d128/b2"
    add(name, "attention_decode", dict(params, peer="kivi llama_kivi.py step"), cache, step,
        [("kv_cache_bytes", cache, "bytes")], backend="kivi")
    # A case name of its own: one run stores each case name once.
    add(name + "/gemv", "attention_decode",
        dict(params, peer="kivi gemv kernels, operands pre-laid-out"),
        cache, step_kernels, [("kv_cache_bytes", cache, "bytes")], backend="kivi_gemv")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="results/kvq.db")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kivi", metavar="DIR", help="KIVI's quant/ folder: build and time its kernels")
    args = ap.parse_args()
    # Without PyTorch or a CUDA device there is nothing to measure: one line, exit 2.
    if torch is None:
        print("torch_peers: PyTorch is not installed (the .venv-hf of scripts/install-deps.sh "
              "--hf has it: .venv-hf/bin/python3 tools/torch_peers.py)", file=sys.stderr)
        sys.exit(2)
    if not torch.cuda.is_available():
        print(f"torch_peers: no CUDA device (torch {torch.__version__}: "
              "torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        sys.exit(2)
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    rows = []  # (case name, op, params, bytes read+written, seconds, spread, reps, extras)

    def add(case, op, params, nbytes, fn, extras=(), backend="torch"):
        t, spread, reps = timeit(fn)
        rows.append((case, op, json.dumps(params), nbytes, t, spread, reps, list(extras),
                     backend))
        print(f"{case:52s} {backend:9s} {t * 1e6:10.1f} us {nbytes / t / 1e9:9.1f} GB/s",
              flush=True)

    kivi = load_kivi(args.kivi) if args.kivi else None

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
    if kivi:
        kv4 = kv.view(1, 1, tokens, cols)
        add(f"rotate_quantize/key_grouped/T{tokens}/H32/d128/f16/b2", "rotate_quantize",
            {"tokens": tokens, "rotation": "none", "bits": 2, "group": 128,
             "peer": "kivi new_pack.triton_quantize_and_pack_along_last_dim"}, nbytes_q,
            lambda: kivi.pack.triton_quantize_and_pack_along_last_dim(kv4, 128, 2),
            backend="kivi")
    del kv, kv32

    heads, d = 32, 128
    for batch, t in [(b, t) for b in (8, 1)
                     for t in ((4096,) if args.quick else (4096, 32768, 131072))]:
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
        if kivi and batch * heads * t * d >= 2**31:
            # KIVI's csrc/gemv_cuda.cu (bgemv2_kernel_outer_dim) offsets the packed codes by
            # `_batch_idx * OC * IC / pack_factor` and the scales and zeros likewise, all `int`:
            # with OC * IC = d * T per (batch, head), that product passes 2^31 once
            # B * H * T * d does (B = 8, H = 32, T = 128K: 255 * 2^24), wraps negative and
            # the kernel reads out of bounds (an illegal address, seen on the device).
            print(f"kivi: skipped at B={batch} T={t}: its kernels index the cache in 32-bit "
                  f"int (_batch_idx * OC * IC overflows beyond 2^31 cache elements)", flush=True)
        elif kivi:
            kivi_decode(add, kivi, batch, heads, d, t, dev)
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
        # A case name is unique within a run (results/schema.sql): the backends timed under one
        # name (torch, kivi, kivi_gemv) share its case row, whose params name each one's peer.
        case_params = {}
        for case, op, params, *_, backend in rows:
            merged = case_params.setdefault(case, (op, json.loads(params), {}))
            merged[2][backend] = json.loads(params).get("peer", "")
        case_ids = {}
        for case, (op, params, peers) in case_params.items():
            if len(peers) > 1:
                params = dict(params, peers=peers)
            c = db.execute("INSERT INTO cases (run_id, name, op, params_json, repro) VALUES "
                           "(?, ?, ?, ?, ?)", (run_id, case, op, json.dumps(params),
                                               "python3 tools/torch_peers.py"))
            case_ids[case] = c.lastrowid
        for case, op, params, nbytes, t, spread, reps, extras, backend in rows:
            cid = case_ids[case]
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
