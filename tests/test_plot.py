#!/usr/bin/env python3
"""tools/plot.py end to end: a small results database built with `kvq` itself (op "method" cases
on a synthetic recording, `kvq sinks` on a `kvq synth` recording, a `kvq bench` run and a
`kvq ppl` run on data/stories260K.bin), then plot.py. Checks that every PNG it writes exists
and is a PNG, and that the plotted series (--dump-data) equal what this test reads itself: its
own SQL over the database and the `kvq sinks --format json` output.

Run by meson (tests/meson.build) with $KVQ_BIN and $KVQ_SOURCE_ROOT set; exit 77 (skipped) with
the reason printed when matplotlib or the kvq binary is missing.
"""
import json
import os
import sqlite3
import subprocess
import sys
import tempfile

SKIP = 77

SCENARIO = """
[scenario]
name = "plot-test"
description = "methods x bits on a small synthetic recording"
reference = "ref"
backends = ["ref"]

[[case]]
name = "method"
op = "method"
seed = 1
tokens = 128
method = ["rtn", "kivi", "rotatekv"]
bits = [2, 4]
gate = "none"
"""

BENCH = """
[scenario]
name = "plot-bench"
description = "fwht at two sizes"
reference = "ref"
backends = ["ref"]

[[case]]
name = "fwht"
op = "fwht"
seed = 1
tokens = 16
n = [64, 1024]
"""

# Perplexity at several bit costs on stories260K (tiny: 64 tokens, windows of 32), for the
# Pareto plot and results/pareto.sql. A clipped case spends the same bits as its unclipped twin,
# so one of each pair is dominated unless their perplexities tie.
PARETO = """
[scenario]
name = "plot-pareto"
backends = ["ref"]

[[case]]
name = "p"
op = "method"
input = "model"
model = "DATA/stories260K.bin"
tokenizer = "DATA/tok512.bin"
text = "DATA/tinystories-sample.txt"
tokens = 64
ppl_tokens = 64
ppl_window = 32
method = ["rtn", "kivi"]
bits = [2, 4]
group = 16
window = 0
clip = [1.0, 0.6]
"""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        failures.append(what)


def kvq(*args, cwd, stdout=None):
    done = subprocess.run([os.environ["KVQ_BIN"], *args], cwd=cwd, stdout=stdout or
                          subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        print(f"kvq {' '.join(args)} exited {done.returncode}:\n{done.stderr}", file=sys.stderr)
        sys.exit(1)
    return done


def close(a, b):
    return abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))


def main():
    try:
        import matplotlib  # noqa: F401  (only whether it is there)
    except ImportError:
        print("skipped: matplotlib is not installed (python3 -m pip install matplotlib==3.9.2)")
        return SKIP
    bin_path = os.environ.get("KVQ_BIN", "")
    root = os.environ.get("KVQ_SOURCE_ROOT", "")
    if not os.path.isfile(bin_path) or not os.path.isdir(root):
        print("skipped: KVQ_BIN / KVQ_SOURCE_ROOT not set (run through meson test)")
        return SKIP
    plot = os.path.join(root, "tools", "plot.py")

    with tempfile.TemporaryDirectory(prefix="kvq_test_plot_") as d:
        with open(os.path.join(d, "acc.toml"), "w", encoding="utf-8") as f:
            f.write(SCENARIO)
        with open(os.path.join(d, "bench.toml"), "w", encoding="utf-8") as f:
            f.write(BENCH)
        kvq("run", "acc.toml", "--db", "kvq.db", cwd=d)
        kvq("synth", "--out", "rec.safetensors", "--seed", "1", cwd=d)
        with open(os.path.join(d, "sinks.json"), "w", encoding="utf-8") as f:
            kvq("sinks", "rec.safetensors", "--format", "json", "--db", "kvq.db", cwd=d, stdout=f)
        kvq("bench", "bench.toml", "--db", "kvq.db", "--min-time", "0.01", cwd=d)
        data = os.environ.get("KVQ_DATA") or os.path.join(root, "data")
        kvq("ppl", "--model", os.path.join(data, "stories260K.bin"), "--tokenizer",
            os.path.join(data, "tok512.bin"), "--text",
            os.path.join(data, "tinystories-sample.txt"), "--method", "rtn,rotatekv",
            "--bits", "2,4", "--max-tokens", "64", "--quiet", "--db", "kvq.db", cwd=d)

        out = os.path.join(d, "img")
        dump_path = os.path.join(d, "dump.json")
        done = subprocess.run([sys.executable, plot, "--db", os.path.join(d, "kvq.db"), "--out",
                               out, "--sinks-json", os.path.join(d, "sinks.json"), "--dump-data",
                               dump_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, check=False)
        check(done.returncode == 0, f"plot.py exits 0 ({done.returncode}: {done.stderr.strip()})")
        expected = ["error_vs_bits.png", "sink_scores.png", "bandwidth_vs_size.png",
                    "ppl_vs_bits.png"]
        for name in expected:
            path = os.path.join(out, name)
            head = b""
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    head = f.read(len(PNG_MAGIC))
            check(os.path.isfile(path) and os.path.getsize(path) > 0, f"{name} written, not empty")
            check(head == PNG_MAGIC, f"{name} starts with the PNG signature")
        with open(dump_path, encoding="utf-8") as f:
            dump = json.load(f)

        # error_vs_bits: kv_nmse per method and bits, as this test reads them with its own SQL.
        db = sqlite3.connect(os.path.join(d, "kvq.db"))
        want = {}
        for method, bits, value in db.execute(
                "SELECT json_extract(c.params_json, '$.method'), json_extract(c.params_json, "
                "'$.bits'), m.value FROM cases c JOIN measurements m ON m.case_id = c.id "
                "WHERE c.run_id = 1 AND m.metric = 'kv_nmse'"):
            want.setdefault(method, {})[bits] = value
        got = {s["method"]: dict(zip(s["bits"], s["values"]))
               for s in dump["error_vs_bits"]["series"] if s["metric"] == "kv_nmse"}
        check(dump["error_vs_bits"]["run"] == 1, "error_vs_bits reads run 1 (the method run)")
        check(set(got) == {"rtn", "kivi", "rotatekv"}, f"one kv_nmse series per method: {set(got)}")
        check(all(set(got[m]) == {2, 4} for m in got), "each series has bits 2 and 4")
        check(all(close(got[m][b], want[m][b]) for m in want for b in want[m]),
              "plotted kv_nmse values equal the database's")
        check(all(s["input"] == "method" for s in dump["error_vs_bits"]["series"]),
              "input is the case name without method and bits ('method')")

        # sink_scores: the ground truth of `kvq sinks --format json`, read independently here.
        with open(os.path.join(d, "sinks.json"), encoding="utf-8") as f:
            sinks = json.load(f)
        check(dump["sink_scores"]["scores"] == sinks["ground_truth"]["scores"],
              "plotted sink scores are kvq sinks' ground-truth scores")
        check(dump["sink_scores"]["sinks"] == sinks["ground_truth"]["sinks"],
              "marked ground-truth sinks are kvq sinks' sinks")

        # bandwidth_vs_size: GB/s as stored; bytes = GB/s x time of the same case and backend.
        rows = db.execute(
            "SELECT b.value, t.value FROM measurements b JOIN measurements t ON t.case_id = "
            "b.case_id AND t.backend = b.backend AND t.metric = 'time' JOIN cases c ON c.id = "
            "b.case_id WHERE b.metric = 'bandwidth' AND b.backend = 'ref' AND c.op = 'fwht' "
            "ORDER BY b.value * t.value").fetchall()
        ref = [s for s in dump["bandwidth_vs_size"]["series"] if s["backend"] == "ref"]
        check(len(ref) == 1 and len(ref[0]["gbps"]) == 2, "one ref series with two sizes")
        if len(ref) == 1 and len(rows) == 2:
            check(all(close(g, r[0]) for g, r in zip(ref[0]["gbps"], rows)),
                  "plotted GB/s equal the database's")
            check(all(close(s, r[0] * 1e9 * r[1]) for s, r in zip(ref[0]["bytes"], rows)),
                  "plotted sizes are GB/s x seconds")
            check(close(ref[0]["bytes"][0], 2 * 4 * 16 * 64),
                  "fwht n=64, 16 tokens moves 8192 bytes")

        ppl = {m: dict(zip(b, v)) for s in [dump["ppl_vs_bits"]] for m, b, v in
               [(x["method"], x["bits"], x["values"]) for x in s["series"]]}
        want_ppl = {}
        for method, bits, value in db.execute(
                "SELECT json_extract(c.params_json, '$.method'), json_extract(c.params_json, "
                "'$.bits'), m.value FROM cases c JOIN measurements m ON m.case_id = c.id "
                "WHERE json_extract(c.params_json, '$.study') = 'ppl' AND m.metric = 'ppl'"):
            want_ppl.setdefault(method, {})[bits] = value
        fp32 = want_ppl.pop("fp32", {}).get(32)
        check(ppl == want_ppl, "plotted perplexities equal the database's")
        check(dump["ppl_vs_bits"]["fp32"] == fp32, "the fp32 line is kvq ppl's fp32 row")

        # ppl_vs_bits_per_element: each method's front equals a brute-force Pareto front of the
        # database's points and the cases `kvq report pareto` lists.
        with open(os.path.join(d, "pareto.toml"), "w", encoding="utf-8") as f:
            f.write(PARETO.replace("DATA", data))
        kvq("run", "pareto.toml", "--db", "pareto.db", cwd=d)
        pdump_path = os.path.join(d, "pareto.json")
        done = subprocess.run([sys.executable, plot, "--db", os.path.join(d, "pareto.db"),
                               "--out", out, "--dump-data", pdump_path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, check=False)
        check(done.returncode == 0 and
              os.path.isfile(os.path.join(out, "ppl_vs_bits_per_element.png")),
              "ppl_vs_bits_per_element.png written")
        with open(pdump_path, encoding="utf-8") as f:
            pdump = json.load(f)["ppl_vs_bits_per_element"]
        pdb = sqlite3.connect(os.path.join(d, "pareto.db"))
        points = {}
        for name, method, bits, value in pdb.execute(
                "SELECT c.name, json_extract(c.params_json, '$.method'), "
                "max(CASE WHEN m.metric = 'ppl_bits_per_element' THEN m.value END), "
                "max(CASE WHEN m.metric = 'ppl' THEN m.value END) FROM cases c "
                "JOIN measurements m ON m.case_id = c.id GROUP BY c.id"):
            points.setdefault(method, []).append((bits, value, name))
        check(len(points.get("rtn", [])) == 4 and len(points.get("kivi", [])) == 4,
              "4 rtn and 4 kivi cases measured a perplexity")
        brute = {m: sorted((b, v) for b, v, _ in pts if not any(
            ob <= b and ov <= v and (ob < b or ov < v) for ob, ov, _ in pts))
            for m, pts in points.items()}
        plotted = {s["method"]: [tuple(p) for p in s["front"]] for s in pdump["series"]}
        check(plotted == brute, f"plotted fronts equal the brute-force fronts ({plotted})")
        report = kvq("report", "--db", "pareto.db", "pareto", "--format", "csv", cwd=d).stdout
        listed = sorted(line.split(",")[1] for line in report.strip().splitlines()[1:])
        want = sorted(n for m, pts in points.items() for b, v, n in pts if (b, v) in brute[m])
        check(listed == want, f"kvq report pareto lists the front's cases ({listed})")
        matched = kvq("report", "--db", "pareto.db", "matched_bits", "--format", "csv",
                      cwd=d).stdout.strip().splitlines()[1:]
        got = {(float(r.split(",")[0]), r.split(",")[2]): float(r.split(",")[3]) for r in matched}
        want = {(budget, m): min(v for b, v, _ in pts if b <= budget)
                for budget in (2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0) for m, pts in points.items()
                if any(b <= budget for b, _, _ in pts)}
        check(got.keys() == want.keys() and
              all(abs(got[k] - want[k]) <= 1e-4 * want[k] for k in want),
              f"kvq report matched_bits: each method's best within each budget ({got})")
        check(sum(len(f) for f in brute.values()) < sum(len(p) for p in points.values()),
              "some case is dominated (the front is a real selection)")

        # Errors a user meets: a missing database is named, nothing is created.
        missing = subprocess.run([sys.executable, plot, "--db", os.path.join(d, "no.db"),
                                  "--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, check=False)
        check(missing.returncode == 2 and "no.db" in missing.stderr,
              "a missing database is exit 2 naming it")
        check(not os.path.exists(os.path.join(d, "no.db")), "and is not created")
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
