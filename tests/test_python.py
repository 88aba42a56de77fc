#!/usr/bin/env python3
"""The kvq Python module (python/, built into KVQ_PYTHONPATH) on numpy arrays.

Checks, each against a value computed here independently or a cross-backend bitwise equality:
  - backends(): ref available; every unavailable backend says why;
  - fwht: a hand-worked example, fp64 Hadamard matrix product, every backend bit-equal to ref;
  - quantize / dequantize: a hand-worked 2-bit group (codes and packed byte), both axes and zero
    points bit-equal across backends, round trip within scale / 2 per element;
  - rotate_k / rotate_v: fp64 Hadamard oracle, the permutation, every backend bit-equal;
  - rotate_quantize = quantize(rotate(widen(kv))) of the reference, float32 and float16 input;
  - attention_decode: every backend within the spec's tolerance of an fp64 softmax computed
    here from the cache's reconstructed K and V;
  - apply / calibrate / apply_method and IncrementalCache: every method bit-equal to the
    `kvq apply` CLI on the same recording (kvq synth), the incremental cache equal to the
    whole-layer dequant for rtn;
  - errors: kvq.Error (a ValueError) with the CLI's message; float64 input refused;
  - torch tensors (when torch imports): same values back as torch tensors; CUDA tensors with the
    cuda backend when a GPU is present (skipped otherwise).
Exit 0 all passed, 1 a check failed, 77 skipped (module not built, or numpy missing).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

SKIP = 77
sys.path.insert(0, os.environ.get("KVQ_PYTHONPATH", "build/python"))
try:
    import numpy as np
    import kvq
except ImportError as e:
    print(f"SKIP: {e} (build with -Dpython=enabled; KVQ_PYTHONPATH names build/python)")
    sys.exit(SKIP)

failures = []
HOST = [b for b in kvq.available_backends() if b != "cuda"]


def check(ok, what, detail=""):
    print(("PASS " if ok else "FAIL ") + what + ("" if ok else f": {detail}"))
    if not ok:
        failures.append(what)
    return ok


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def hadamard(n):
    """Normalized Sylvester Hadamard matrix in fp64 (docs/spec.md §1's natural order)."""
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def raises(fn, message_part):
    try:
        fn()
    except kvq.Error as e:
        return isinstance(e, ValueError) and message_part in str(e), str(e)
    return False, "no error"


def read_safetensors(path):
    """A minimal reader (no dependency): {name: numpy array}, metadata."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "U8": np.uint8}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out, header.get("__metadata__", {})


def test_backends():
    entries = kvq.backends()
    check(entries[0]["name"] == "ref" and entries[0]["available"], "backends: ref first, available")
    check(all(e["available"] or e["detail"] for e in entries),
          "backends: every unavailable backend says why", entries)
    check(set(kvq.available_backends()) <= {e["name"] for e in entries}, "available_backends")


def test_fwht(rng):
    check(same_bits(kvq.fwht(np.ones(4, np.float32), 4), np.array([2, 0, 0, 0], np.float32)),
          "fwht: [1,1,1,1] -> [2,0,0,0]")
    x = rng.standard_normal((6, 64), dtype=np.float32)
    want = x.astype(np.float64) @ hadamard(64).T
    got = kvq.fwht(x, 64)
    check(np.abs(got - want).max() < 1e-5, "fwht: fp64 Hadamard product", np.abs(got - want).max())
    for b in HOST:
        check(same_bits(kvq.fwht(x, 64, backend=b), got), f"fwht: {b} bit-equal to ref")
    check(same_bits(x, x.copy()) and not np.shares_memory(got, x), "fwht: input untouched")


def test_quantize(rng):
    q = kvq.quantize(np.array([[0, 1, 2, 3]], np.float32), bits=2, group=4)
    check(list(q.unpacked()[0]) == [0, 1, 2, 3] and list(q.codes) == [0b11100100]
          and float(q.scale[0]) == 1.0 and float(q.zero[0]) == 0.0,
          "quantize: hand-worked 2-bit group (codes 0..3, byte 228, scale 1, zero 0)",
          (q.unpacked(), q.codes, q.scale, q.zero))
    check(same_bits(kvq.dequantize(q), np.array([[0, 1, 2, 3]], np.float32)),
          "dequantize: hand-worked group exact")
    x = rng.standard_normal((40, 96), dtype=np.float32)
    for axis in ("token", "channel"):
        for zp in ("float", "int"):
            for bits in (1, 2, 3, 4, 8):
                ref = kvq.quantize(x, bits, group=32, axis=axis, zero_point=zp)
                back = kvq.dequantize(ref)
                for b in HOST:
                    got = kvq.quantize(x, bits, group=32, axis=axis, zero_point=zp, backend=b)
                    ok = all(same_bits(getattr(got, f), getattr(ref, f))
                             for f in ("codes", "scale", "zero", "zero_int"))
                    check(ok and same_bits(kvq.dequantize(got, backend=b), back),
                          f"quantize {axis} {zp} b{bits}: {b} bit-equal to ref")
            # Round trip: |x - x'| <= scale / 2 (+ fp16 zero rounding) per element, here as
            # a bound on the whole tensor from the largest group range.
            q4 = kvq.quantize(x, 4, group=32, axis=axis, zero_point=zp)
            err = np.abs(kvq.dequantize(q4) - x).max()
            check(err <= float(q4.scale.astype(np.float32).max()) * 0.5 + 1e-2,
                  f"quantize {axis} {zp}: 4-bit round trip within scale/2", err)
    rebuilt = kvq.Quantized(ref.rows, ref.cols, ref.bits, ref.group, ref.axis, ref.clip,
                            ref.zero_point, codes=ref.codes, scale=ref.scale,
                            zero_int=ref.zero_int)
    check(same_bits(kvq.dequantize(rebuilt), back), "Quantized rebuilt from its arrays")


def test_rotation(rng):
    T, H, d, g = 5, 4, 16, 2
    k = rng.standard_normal((T, H, d), dtype=np.float32)
    want = (k.reshape(T, H // g, g * d).astype(np.float64) @ hadamard(g * d).T).reshape(T, -1)
    got = kvq.rotate_k(k, head_group=g)
    check(np.abs(got.reshape(T, -1) - want).max() < 1e-5, "rotate_k: fp64 grouped Hadamard")
    perm = rng.permutation(H * d).astype(np.int32)
    permuted = kvq.rotate_k(k, head_group=g, perm=perm)
    check(same_bits(permuted.reshape(T, -1), got.reshape(T, -1)[:, perm]),
          "rotate_k: stored[j] = rotated[perm[j]]")
    check(same_bits(kvq.reorder(got.reshape(T, -1), perm), permuted.reshape(T, -1)),
          "reorder: same permutation")
    v = rng.standard_normal((T, H, d), dtype=np.float32)
    rv = kvq.rotate_v(v)
    check(np.abs(rv.astype(np.float64) - v.astype(np.float64) @ hadamard(d).T).max() < 1e-5,
          "rotate_v: fp64 per-head Hadamard")
    for b in HOST:
        check(same_bits(kvq.rotate_k(k, g, perm, backend=b), permuted)
              and same_bits(kvq.rotate_v(v, backend=b), rv), f"rotate_k/v: {b} bit-equal")
    # The fused append path equals quantize(rotate(widen(kv))) of the reference.
    for dtype in (np.float32, np.float16):
        kv = k.astype(dtype)
        wide = kv.astype(np.float32)
        cases = {"key_grouped": kvq.rotate_k(wide, g, perm), "per_head": kvq.rotate_v(wide),
                 "none": wide}
        for rotation, rotated in cases.items():
            want_q = kvq.quantize(rotated.reshape(T, -1), 2, group=16)
            for b in ["ref"] + HOST:
                got_q = kvq.rotate_quantize(kv, rotation, g, perm, bits=2, group=16, backend=b)
                check(all(same_bits(getattr(got_q, f), getattr(want_q, f))
                          for f in ("codes", "scale", "zero")),
                      f"rotate_quantize {np.dtype(dtype).name} {rotation}: {b} = "
                      "quantize(rotate(kv))")


def numpy_decode(q, k, v):
    """fp64 softmax attention of q [Hq, d] over k, v [T, H, d] (grouped-query)."""
    hq, d = q.shape
    group = hq // k.shape[1]
    out = np.zeros((hq, d))
    for h in range(hq):
        kh, vh = k[:, h // group].astype(np.float64), v[:, h // group].astype(np.float64)
        s = kh @ q[h].astype(np.float64) / np.sqrt(d)
        p = np.exp(s - s.max())
        out[h] = p @ vh / p.sum()
    return out


def test_attention(recording):
    layer = {n: recording[f"layers.0.{n}"] for n in ("k", "k_pre_rope", "v", "hidden_in", "q")}
    calibration = kvq.calibrate([layer], "rtn", 8)
    applied = kvq.apply_method(layer, 0, 1, calibration, "rtn", 8)
    q = recording["layers.0.q"][-1]
    want = numpy_decode(q, applied.cache.keys(), applied.cache.values())
    check(np.abs(kvq.attention_decode_oracle(q, applied.cache) - want).max() < 1e-9,
          "attention_decode_oracle: fp64 softmax here")
    for b in ["ref"] + HOST:
        got = kvq.attention_decode(q, applied.cache, backend=b)
        err = np.abs(got - want).max() / max(1e-30, np.abs(want).max())
        check(err < 1e-5, f"attention_decode: {b} within 1e-5 of fp64", err)


def recording_layers(recording):
    """A recording's layers as kvq.apply takes them (fp16 tensors widened exactly)."""
    layers = []
    i = 0
    while f"layers.{i}.v" in recording:
        layer = {n: recording[f"layers.{i}.{n}"].astype(np.float32)
                 for n in ("k", "k_pre_rope", "v", "hidden_in", "q") if f"layers.{i}.{n}" in
                 recording}
        if "modality" in recording:
            layer["modality"] = recording["modality"]
        layers.append(layer)
        i += 1
    return layers


def test_apply_matches_cli(path, kvq_bin, tmp):
    """kvq.apply on the arrays of a recording = the kvq apply CLI on its file, bit for bit."""
    recording, meta = read_safetensors(path)
    layers = recording_layers(recording)
    theta = float(meta.get("rope_theta", 10000.0))  # kvq apply reads it from the metadata
    name = os.path.basename(path)
    for method in kvq.METHODS:
        for bits in (2, 4):
            out = os.path.join(tmp, f"{method}-{bits}.safetensors")
            r = subprocess.run([kvq_bin, "apply", "--method", method, "--bits", str(bits),
                                "--in", path, "--out", out], capture_output=True, text=True)
            if not check(r.returncode == 0, f"kvq apply {method} b{bits} exits 0", r.stderr):
                continue
            cli, _ = read_safetensors(out)
            applied, _ = kvq.apply(layers, method, bits, rope_theta=theta)
            ok = True
            for li, a in enumerate(applied):
                ok &= same_bits(a.k_dequant(), cli[f"layers.{li}.k.dequant"])
                ok &= same_bits(a.v_dequant(), cli[f"layers.{li}.v.dequant"])
                if method == "fp32":
                    continue
                for x, t in (("k", a.k), ("v", a.v)):
                    codes = np.concatenate([p.codes for _, p in t.parts] or [np.zeros(0, np.uint8)])
                    ok &= same_bits(codes, cli[f"layers.{li}.{x}.codes"])
                    ok &= same_bits(t.kept, cli[f"layers.{li}.{x}.kept"])
            check(ok, f"{name}: kvq.apply {method} b{bits} bit-equal to the kvq apply CLI")
    if "synth" not in name:
        return
    # A method reads only the tensors it needs: rtn from k and v alone gives the same result.
    only, _ = kvq.apply([{"k": l["k"], "v": l["v"]} for l in layers], "rtn", 4)
    full, _ = kvq.apply(layers, "rtn", 4)
    check(same_bits(only[1].k_dequant(), full[1].k_dequant()), "apply: rtn from k and v alone")
    check(raises(lambda: kvq.apply([{"k": l["k"], "v": l["v"]} for l in layers], "rotatekv", 2),
                 "")[0], "apply: rotatekv without k_pre_rope is a kvq.Error")
    # The per-token cache of kvq ppl equals the whole-layer dequant for rtn (methods.h).
    params = kvq.MethodParams("rtn", 4)
    cache = kvq.IncrementalCache(params, 4, 32, 0, len(layers))
    for t in range(layers[0]["v"].shape[0]):
        cache.append(k=layers[0]["k"][t].reshape(-1), v=layers[0]["v"][t].reshape(-1), position=t)
    whole, _ = kvq.apply(layers, "rtn", 4)
    check(same_bits(cache.keys(), whole[0].k_dequant().reshape(len(cache), -1))
          and same_bits(cache.values(), whole[0].v_dequant().reshape(len(cache), -1)),
          "IncrementalCache rtn b4 = whole-layer dequant")
    storage = cache.k_storage()
    check(storage["elements"] == layers[0]["v"].size and storage["total"] > 0,
          "IncrementalCache storage counts", storage)


def test_errors(path, kvq_bin, tmp):
    r = subprocess.run([kvq_bin, "apply", "--method", "nope", "--in", path, "--out",
                        os.path.join(tmp, "x.safetensors")], capture_output=True, text=True)
    ok, message = raises(lambda: kvq.MethodParams("nope"), "unknown method 'nope'")
    check(ok and r.returncode == 2 and r.stderr.strip() == "kvq: " + message,
          "unknown method: kvq.Error with the CLI's message", (message, r.stderr))
    check(raises(lambda: kvq.quantize(np.zeros((2, 4), np.float64), 2),
                 "quantize x: dtype float64, expected float32")[0], "float64 input refused")
    check(raises(lambda: kvq.quantize(np.zeros((2, 4), np.float32), 5), "bits")[0],
          "bits 5 refused")
    nan = np.zeros((2, 4), np.float32)
    nan[1, 2] = np.nan
    check(raises(lambda: kvq.quantize(nan, 2), "x: non-finite value nan at index 6")[0],
          "non-finite input: index named")
    unavailable = [e for e in kvq.backends() if not e["available"]]
    if unavailable:
        e = unavailable[0]
        check(raises(lambda: kvq.fwht(np.ones(4, np.float32), 4, backend=e["name"]),
                     e["detail"])[0], f"unavailable backend {e['name']}: error says why")
    check(raises(lambda: kvq.fwht(np.ones(4, np.float32), 4, backend="nope"),
                 "unknown backend 'nope'")[0], "unknown backend named")


def test_torch(rng):
    try:
        import torch
    except ImportError:
        print("SKIP torch tensors: torch not importable here (suite hf runs them)")
        return
    x = rng.standard_normal((8, 64), dtype=np.float32)
    got = kvq.fwht(torch.from_numpy(x), 64)
    check(isinstance(got, torch.Tensor) and same_bits(got.numpy(), kvq.fwht(x, 64)),
          "torch: fwht of a CPU tensor is a tensor with the numpy result")
    q = kvq.quantize(torch.from_numpy(x).T.contiguous().T, 2, group=32)
    check(same_bits(q.codes, kvq.quantize(x, 2, group=32).codes),
          "torch: non-contiguous CPU tensor")
    if getattr(kvq._kvq, "cuda_built", False):
        check(raises(lambda: kvq._kvq.cuda.fwht(torch.ones(4), 4),
                     "fwht x: not a CUDA tensor (DLPack device type 1)")[0],
              "cuda DLPack path: a CPU tensor is refused, naming its device")
    if not torch.cuda.is_available() or "cuda" not in kvq.available_backends():
        print("SKIP CUDA tensors: no GPU here")
        return
    xd = torch.from_numpy(x).cuda()
    got = kvq.fwht(xd, 64, backend="cuda")
    check(got.is_cuda and same_bits(got.cpu().numpy(), kvq.fwht(x, 64)),
          "cuda: fwht of a CUDA tensor stays on the device, bit-equal to ref")
    kd = torch.from_numpy(rng.standard_normal((8, 4, 32), dtype=np.float32)).cuda()
    perm = rng.permutation(128).astype(np.int32)
    check(same_bits(kvq.rotate_k(kd, 4, perm, backend="cuda").cpu().numpy(),
                    kvq.rotate_k(kd.cpu().numpy(), 4, perm))
          and same_bits(kvq.rotate_v(kd, backend="cuda").cpu().numpy(),
                        kvq.rotate_v(kd.cpu().numpy())),
          "cuda: rotate_k / rotate_v of CUDA tensors bit-equal to ref")
    qd = kvq.quantize(xd, 2, group=32, backend="cuda")
    qh = kvq.quantize(x, 2, group=32)
    check(same_bits(kvq.dequantize(qd, backend="cuda").cpu().numpy(), kvq.dequantize(qh)),
          "cuda: quantize + dequantize of a CUDA tensor bit-equal to ref")
    kv = torch.from_numpy(rng.standard_normal((16, 4, 32), dtype=np.float32)).half().cuda()
    rq = kvq.rotate_quantize(kv, "key_grouped", 4, bits=4, group=128, backend="cuda")
    want = kvq.rotate_quantize(kv.cpu().numpy(), "key_grouped", 4, bits=4, group=128)
    check(same_bits(kvq.dequantize(rq, backend="cuda").cpu().numpy(), kvq.dequantize(want)),
          "cuda: rotate_quantize of a CUDA fp16 tensor bit-equal to ref")


def test_readme_example():
    """The README's Python example runs as printed."""
    root = os.environ.get("KVQ_SOURCE_ROOT", os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    block = readme.split("## Python\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    try:
        exec(compile(block, "README.md (Python example)", "exec"), {})
        check(len(block.strip().splitlines()) <= 12, "README example: about ten lines")
    except Exception as e:  # noqa: BLE001  (any failure of the example is the finding)
        check(False, "README Python example runs", repr(e))


def main():
    rng = np.random.default_rng(7)
    test_readme_example()
    kvq_bin = os.environ.get("KVQ_BIN", "build/harness/kvq")
    test_backends()
    test_fwht(rng)
    test_quantize(rng)
    test_rotation(rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "synth.safetensors")
        subprocess.run([kvq_bin, "synth", "--out", path, "--seed", "3", "--tokens", "96",
                        "--layers", "3"], check=True, capture_output=True)
        recording, _ = read_safetensors(path)
        test_attention(recording)
        test_apply_matches_cli(path, kvq_bin, tmp)
        data = os.environ.get("KVQ_DATA", "data")
        test_apply_matches_cli(os.path.join(data, "gutenberg-llama-256.safetensors"), kvq_bin,
                               tmp)
        test_errors(path, kvq_bin, tmp)
    test_torch(rng)
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
