#!/usr/bin/env python3
r"""Plots from the kvq results database (SQLite, results/kvq.db), written as PNG files.

  error_vs_bits.png      KV NMSE and attention-output relative error vs bits, one line per
                         method (log scale), from the op "method" cases of one run
                         (`kvq run scenarios/demo.toml`, scenarios/accuracy.toml)
  ppl_vs_bits.png        perplexity vs bits, one line per method, the fp32 model as a dashed
                         line, from `kvq ppl ... --db` (or method cases that measured ppl)
  ppl_vs_bits_per_element.png  perplexity vs the bits per element its cache spent, every case
                         of each method as a point and the method's Pareto front as a line,
                         from op "method" cases with ppl_bits_per_element (scenarios/gutenberg.toml)
  sink_scores.png        attention-sink ground-truth score per token, the sink threshold, the
                         ground-truth and planted sinks marked, and each predictor's tokens;
                         from `kvq sinks REC --format json` given with --sinks-json (the database
                         keeps each predictor's precision and recall, not the per-token scores)
  bandwidth_vs_size.png  GB/s vs bytes moved per call, one line per backend, one panel per op,
                         from `kvq bench SCENARIO --db` (memcpy of the same bytes as baseline)

A plot whose rows are not in the database is skipped with a line on stderr saying which command
stores them. Runs are named like `kvq report --run`: an id, `last` or `last~N`; without --run
each plot reads the newest run that has its rows.

Example (the README's images; K=build/harness/kvq):
  $K run scenarios/demo.toml
  $K synth --out /tmp/synth.safetensors --seed 1
  $K sinks /tmp/synth.safetensors --db results/kvq.db --format json > /tmp/sinks.json
  $K ppl --model data/stories260K.bin --tokenizer data/tok512.bin \
      --text data/tinystories-sample.txt --method fp32,rtn,kivi,rotatekv \
      --bits 2,3,4 --max-tokens 512 --quiet
  $K bench docs/img/sizes.toml --min-time 0.05
  python3 tools/plot.py --db results/kvq.db --out docs/img --sinks-json /tmp/sinks.json

--dump-data FILE writes every plotted series as JSON (what each line or bar shows, exactly as
read), so a test can check the plots against its own SQL query.
"""
import argparse
import json
import math
import os
import sqlite3
import sys

# The papers' methods in a stable order and colour; any other method gets the next colour.
METHOD_ORDER = ["fp32", "rtn", "kivi", "kvquant", "kvsink+kvquant", "rotatekv", "akvq-vl"]


def fail(message):
    print(f"plot.py: {message}", file=sys.stderr)
    sys.exit(2)


def skip(plot, reason):
    print(f"plot.py: skipped {plot}: {reason}", file=sys.stderr)


def resolve_run(db, spec, default_sql, what):
    """An id, 'last' or 'last~N' (like `kvq report --run`); None: the newest run that has `what`
    (default_sql returns it)."""
    ids = [row[0] for row in db.execute("SELECT id FROM runs ORDER BY id")]
    if not ids:
        fail("the database has no runs (`kvq run SCENARIO --db PATH` writes one)")
    if spec is None:
        row = db.execute(default_sql).fetchone()
        return row[0] if row else None
    if spec == "last":
        return ids[-1]
    if spec.startswith("last~") and spec[5:].isdigit():
        back = int(spec[5:])
        if back >= len(ids):
            fail(f"--run {spec}: the database holds only {len(ids)} run(s)")
        return ids[-1 - back]
    if spec.isdigit() and int(spec) in ids:
        return int(spec)
    if spec.isdigit():
        fail(f"--run {spec}: no such run (stored: {', '.join(map(str, ids))})")
    fail(f"--run '{spec}': expected a run id, 'last' or 'last~N'")
    return None


def method_key(method):
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def colour_of(method):
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return cycle[method_key(method)[0] % len(cycle)] if method in METHOD_ORDER else None


# ---- data, read straight from the database --------------------------------------------------


def error_data(db, run_spec):
    """(run, {input: {metric: {method: [(bits, value)]}}}) of op "method" cases. input is the case
    name without its method and bits parts, as results/accuracy.sql defines it."""
    run = resolve_run(
        db, run_spec,
        "SELECT max(run_id) FROM cases WHERE json_extract(params_json, '$.op') = 'method' "
        "HAVING max(run_id) IS NOT NULL", "method cases")
    data = {}
    if run is None:
        return None, data
    rows = db.execute(
        "SELECT c.name, json_extract(c.params_json, '$.method'), json_extract(c.params_json, "
        "'$.bits'), m.metric, m.value FROM cases c JOIN measurements m ON m.case_id = c.id "
        "WHERE c.run_id = ? AND json_extract(c.params_json, '$.op') = 'method' AND m.backend = "
        "'ref' AND m.metric IN ('kv_nmse', 'attention_rel_error') AND m.value IS NOT NULL "
        "ORDER BY c.id", (run,))
    for name, method, bits, metric, value in rows:
        if bits is None:  # fp32: no bits, no error
            continue
        parts = [p for p in name.split("/") if p not in (method, f"b{bits}")]
        source = "/".join(parts) or name
        data.setdefault(source, {}).setdefault(metric, {}).setdefault(method, []).append(
            (bits, value))
    for by_metric in data.values():
        for by_method in by_metric.values():
            for points in by_method.values():
                points.sort()
    return run, data


def ppl_data(db, run_spec):
    """(run, {method: [(bits, ppl)]}, fp32 ppl or None) from `kvq ppl --db` cases (study "ppl",
    fp32 stored with bits 32) or op "method" cases with ppl / ppl_fp32 measurements."""
    run = resolve_run(
        db, run_spec,
        "SELECT max(c.run_id) FROM cases c JOIN measurements m ON m.case_id = c.id "
        "WHERE m.metric = 'ppl' HAVING max(c.run_id) IS NOT NULL", "ppl")
    series, fp32 = {}, None
    if run is None:
        return None, series, fp32
    rows = db.execute(
        "SELECT json_extract(c.params_json, '$.method'), json_extract(c.params_json, '$.bits'), "
        "m.metric, m.value FROM cases c JOIN measurements m ON m.case_id = c.id "
        "WHERE c.run_id = ? AND m.metric IN ('ppl', 'ppl_fp32') AND m.value IS NOT NULL "
        "ORDER BY c.id", (run,))
    for method, bits, metric, value in rows:
        if metric == "ppl_fp32" or method == "fp32":
            fp32 = value
        elif method is not None and bits is not None:
            series.setdefault(method, []).append((bits, value))
    for points in series.values():
        points.sort()
    return run, series, fp32


def pareto_data(db, run_spec):
    """(run, {method: [(bits_per_element, ppl)]}, fp32 ppl or None) from op "method" cases that
    stored ppl_bits_per_element (the cache the perplexity ran with), every case of a method."""
    run = resolve_run(
        db, run_spec,
        "SELECT max(c.run_id) FROM cases c JOIN measurements m ON m.case_id = c.id "
        "WHERE m.metric = 'ppl_bits_per_element' HAVING max(c.run_id) IS NOT NULL",
        "ppl_bits_per_element")
    series, fp32 = {}, None
    if run is None:
        return None, series, fp32
    rows = db.execute(
        "SELECT json_extract(c.params_json, '$.method'), "
        "max(CASE WHEN m.metric = 'ppl_bits_per_element' THEN m.value END), "
        "max(CASE WHEN m.metric = 'ppl' THEN m.value END), "
        "max(CASE WHEN m.metric = 'ppl_fp32' THEN m.value END) "
        "FROM cases c JOIN measurements m ON m.case_id = c.id WHERE c.run_id = ? "
        "GROUP BY c.id ORDER BY c.id", (run,))
    for method, bits, ppl, base in rows:
        fp32 = base if base is not None else fp32
        if method not in (None, "fp32") and bits is not None and ppl is not None:
            series.setdefault(method, []).append((bits, ppl))
    for points in series.values():
        points.sort()
    return run, series, fp32


def pareto_front(points):
    """The points no other point beats (fewer or equal bits and lower or equal perplexity, one
    of them strictly), ascending in bits: the rule of results/pareto.sql."""
    front = []
    for bits, ppl in sorted(points):
        if not front or ppl < front[-1][1]:
            front.append((bits, ppl))
    return front


def bandwidth_data(db, run_spec):
    """(run, {op: {backend: [(bytes, GB/s)]}}) from `kvq bench --db`. Bytes moved per call are
    GB/s x seconds (the bench stores both, not the byte count); memcpy, stored as bandwidth only,
    is placed at its case's bytes (it copies the same bytes)."""
    run = resolve_run(
        db, run_spec,
        "SELECT max(c.run_id) FROM cases c JOIN measurements m ON m.case_id = c.id "
        "WHERE m.metric = 'bandwidth' HAVING max(c.run_id) IS NOT NULL", "bandwidth")
    data = {}
    if run is None:
        return None, data
    rows = db.execute(
        "SELECT c.id, c.op, b.backend, b.value, t.value FROM cases c "
        "JOIN measurements b ON b.case_id = c.id AND b.metric = 'bandwidth' "
        "LEFT JOIN measurements t ON t.case_id = c.id AND t.backend = b.backend "
        "AND t.metric = 'time' WHERE c.run_id = ? AND b.value > 0 ORDER BY c.id", (run,))
    cases = {}
    for case_id, op, backend, gbps, seconds in rows:
        cases.setdefault(case_id, (op, []))[1].append((backend, gbps, seconds))
    for op, entries in cases.values():
        sized = [gbps * 1e9 * seconds for _, gbps, seconds in entries if seconds]
        if not sized:
            continue
        case_bytes = max(sized)
        for backend, gbps, seconds in entries:
            size = gbps * 1e9 * seconds if seconds else case_bytes
            data.setdefault(op, {}).setdefault(backend, []).append((size, gbps))
    for by_backend in data.values():
        for points in by_backend.values():
            points.sort()
    return run, data


# ---- plots ----------------------------------------------------------------------------------


def plot_errors(plt, out, run, data, dpi):
    inputs = sorted(data)
    fig, axes = plt.subplots(len(inputs), 2, figsize=(10, 3.6 * len(inputs)), squeeze=False)
    titles = {"kv_nmse": "KV NMSE", "attention_rel_error": "attention output, max rel. error"}
    for row, source in enumerate(inputs):
        for col, metric in enumerate(["kv_nmse", "attention_rel_error"]):
            ax = axes[row][col]
            by_method = data[source].get(metric, {})
            for method in sorted(by_method, key=method_key):
                points = [(b, v) for b, v in by_method[method] if v > 0]
                if points:
                    ax.plot([b for b, _ in points], [v for _, v in points], marker="o",
                            label=method, color=colour_of(method))
            ax.set_yscale("log")
            ax.set_xticks(sorted({b for pts in by_method.values() for b, _ in pts}))
            ax.set_xlabel("bits")
            ax.set_title(f"{titles[metric]} ({source})", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if by_method:
                ax.legend(fontsize=8)
    fig.suptitle(f"error vs bits per method, run {run} (lower is better)")
    fig.tight_layout()
    path = os.path.join(out, "error_vs_bits.png")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_ppl(plt, out, run, series, fp32, dpi):
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted(series, key=method_key):
        points = series[method]
        ax.plot([b for b, _ in points], [v for _, v in points], marker="o", label=method,
                color=colour_of(method))
    if fp32 is not None:
        ax.axhline(fp32, linestyle="--", color="black", label=f"fp32 ({fp32:.3g})")
    ax.set_xticks(sorted({b for pts in series.values() for b, _ in pts}))
    ax.set_xlabel("bits")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"perplexity vs bits per method, run {run}")
    fig.tight_layout()
    path = os.path.join(out, "ppl_vs_bits.png")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_pareto(plt, out, run, series, fp32, dpi):
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted(series, key=method_key):
        points, colour = series[method], colour_of(method)
        ax.scatter([b for b, _ in points], [v for _, v in points], s=12, alpha=0.45, color=colour)
        front = pareto_front(points)
        ax.plot([b for b, _ in front], [v for _, v in front], marker="o", label=method,
                color=colour)
    if fp32 is not None:
        ax.axhline(fp32, linestyle="--", color="black", label=f"fp32 ({fp32:.3g})")
    ax.set_xlabel("bits per element (codes, scales, zeros, kept fp16 tokens, outliers)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"perplexity vs bits/element, Pareto fronts, run {run}")
    fig.tight_layout()
    path = os.path.join(out, "ppl_vs_bits_per_element.png")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_sinks(plt, out, sinks, dpi):
    scores = sinks["scores"]
    tokens = list(range(len(scores)))
    predictors = sinks["predictors"]
    fig, (ax, axp) = plt.subplots(2, 1, figsize=(10, 4.5 + 0.25 * len(predictors)), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1 + 0.2 * len(predictors)]})
    ax.bar(tokens, scores, width=1.0, color="#9ab", label="ground-truth score")
    ax.axhline(sinks["tau_mass"], linestyle="--", color="grey",
               label=f"sink threshold tau_mass = {sinks['tau_mass']:g}")
    truth = [t for t in sinks["sinks"] if t < len(scores)]
    ax.scatter(truth, [scores[t] for t in truth], color="red", zorder=3, marker="o",
               label="ground-truth sink")
    if sinks.get("planted") is not None:
        planted = [t for t in sinks["planted"] if t < len(scores)]
        ax.scatter(planted, [scores[t] for t in planted], color="black", zorder=4, marker="x",
                   s=60, label="planted sink")
    if all(s > 0 for s in scores):
        ax.set_yscale("log")
    ax.set_ylabel("score (attention mass x (i+1))")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"attention-sink scores per token: {os.path.basename(sinks['recording'])}")
    for i, p in enumerate(predictors):
        axp.scatter(p["tokens"], [i] * len(p["tokens"]), marker="|", s=120)
    axp.set_yticks(range(len(predictors)))
    axp.set_yticklabels([p["name"] for p in predictors], fontsize=8)
    axp.set_ylim(-0.5, len(predictors) - 0.5)
    axp.set_xlabel("token")
    axp.set_title("predicted sinks", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, "sink_scores.png")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_bandwidth(plt, out, run, data, dpi):
    ops = sorted(data)
    cols = min(3, len(ops))
    rows = math.ceil(len(ops) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for i, op in enumerate(ops):
        ax = axes[i // cols][i % cols]
        for backend in sorted(data[op]):
            points = data[op][backend]
            ax.plot([s for s, _ in points], [g for _, g in points], marker="o", label=backend,
                    linestyle="--" if backend == "memcpy" else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("bytes read + written per call")
        ax.set_ylabel("GB/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for j in range(len(ops), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"bandwidth vs size per backend, run {run}")
    fig.tight_layout()
    path = os.path.join(out, "bandwidth_vs_size.png")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def read_sinks_json(path):
    """The ground truth of `kvq sinks REC --format json`: scores of tokens 0..scored-1, sinks,
    tau_mass, planted (when the recording has them) and each predictor's tokens."""
    try:
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        return {
            "recording": j["recording"],
            "tau_mass": j["tau_mass"],
            "scores": j["ground_truth"]["scores"],
            "sinks": j["ground_truth"]["sinks"],
            "planted": j.get("planted"),
            "predictors": [{"name": p["name"], "tokens": p["tokens"]} for p in j["predictors"]],
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"--sinks-json {path}: not the output of `kvq sinks REC --format json` ({e!r})")
    return None


def main():
    parser = argparse.ArgumentParser(
        prog="tools/plot.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="results/kvq.db",
                        help="results database written by kvq run / bench / ppl / sinks "
                             "(default: %(default)s)")
    parser.add_argument("--out", required=True, help="folder for the PNG files (created)")
    parser.add_argument("--run", help="read this run (id, last, last~N) instead of the newest "
                                      "run that has each plot's rows")
    parser.add_argument("--sinks-json", metavar="FILE",
                        help="`kvq sinks REC --format json` output, for sink_scores.png")
    parser.add_argument("--dump-data", metavar="FILE",
                        help="also write the plotted series as JSON to FILE")
    parser.add_argument("--dpi", type=int, default=80,
                        help="PNG resolution (default %(default)s: small files for the README)")
    args = parser.parse_args()

    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        fail("matplotlib is not installed (python3 -m pip install matplotlib==3.9.2)")
    if not os.path.isfile(args.db):
        fail(f"{args.db}: no results database (run `kvq run SCENARIO --db {args.db}` first)")
    os.makedirs(args.out, exist_ok=True)
    db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    dump, written = {}, []

    run, errors = error_data(db, args.run)
    if errors:
        written.append(plot_errors(plt, args.out, run, errors, args.dpi))
        dump["error_vs_bits"] = {
            "run": run,
            "series": [{"input": s, "metric": m, "method": meth, "bits": [b for b, _ in pts],
                        "values": [v for _, v in pts]}
                       for s in sorted(errors) for m in sorted(errors[s])
                       for meth in sorted(errors[s][m]) for pts in [errors[s][m][meth]]]}
    else:
        skip("error_vs_bits.png", "no op \"method\" cases (kvq run scenarios/demo.toml)")

    run, series, fp32 = ppl_data(db, args.run)
    if series:
        written.append(plot_ppl(plt, args.out, run, series, fp32, args.dpi))
        dump["ppl_vs_bits"] = {
            "run": run, "fp32": fp32,
            "series": [{"method": m, "bits": [b for b, _ in series[m]],
                        "values": [v for _, v in series[m]]} for m in sorted(series)]}
    else:
        skip("ppl_vs_bits.png", "no ppl measurements (kvq ppl --model M ... --db DB)")

    run, pareto, fp32 = pareto_data(db, args.run)
    if pareto:
        written.append(plot_pareto(plt, args.out, run, pareto, fp32, args.dpi))
        dump["ppl_vs_bits_per_element"] = {
            "run": run, "fp32": fp32,
            "series": [{"method": m, "bits_per_element": [b for b, _ in pareto[m]],
                        "values": [v for _, v in pareto[m]],
                        "front": pareto_front(pareto[m])} for m in sorted(pareto)]}
    else:
        skip("ppl_vs_bits_per_element.png",
             "no ppl_bits_per_element (kvq run scenarios/gutenberg.toml --var model=PATH)")

    if args.sinks_json:
        sinks = read_sinks_json(args.sinks_json)
        written.append(plot_sinks(plt, args.out, sinks, args.dpi))
        dump["sink_scores"] = sinks
    else:
        skip("sink_scores.png", "give --sinks-json (kvq sinks REC --format json > FILE)")

    run, bandwidth = bandwidth_data(db, args.run)
    if bandwidth:
        written.append(plot_bandwidth(plt, args.out, run, bandwidth, args.dpi))
        dump["bandwidth_vs_size"] = {
            "run": run,
            "series": [{"op": op, "backend": b, "bytes": [s for s, _ in bandwidth[op][b]],
                        "gbps": [g for _, g in bandwidth[op][b]]}
                       for op in sorted(bandwidth) for b in sorted(bandwidth[op])]}
    else:
        skip("bandwidth_vs_size.png", "no bandwidth rows (kvq bench SCENARIO --db DB)")

    if args.dump_data:
        with open(args.dump_data, "w", encoding="utf-8") as f:
            json.dump(dump, f, indent=1)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
