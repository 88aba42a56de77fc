#!/usr/bin/env python3
"""Behaviour of two kvq binaries compared (issue 16: a refactor must change nothing visible).

  python3 scripts/compare_behaviour.py BEFORE_KVQ AFTER_KVQ [--scenario S.toml ...] [--work DIR]

Compares, and prints one line per difference (exit status 1 when any):
  - `kvq --help`, `kvq` alone and `kvq SUB --help` for every subcommand `kvq --help` lists:
    stdout, stderr and exit status, byte for byte;
  - `kvq gate S.toml --db X` for each scenario (default scenarios/ci.toml): exit status, the
    summary line, and the SQLite rows of runs (scenario, hash, status), cases, checks and
    measurements without ids, run ids and times (values of metrics in seconds are left out),
    sorted; a study's cached recording path (its name hashes the binary) as CACHE/;
  - every `kvq report` query of `kvq report --list`, in table, csv and json, plus --compare of the
    run with itself: both binaries read the same database (BEFORE's), so the output is compared
    byte for byte, timings included.
Build BEFORE from the old commit and copy its build/harness/kvq aside before building AFTER.
"""
import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys


def run(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True)
    return p.returncode, p.stdout, p.stderr


def subcommands(kvq, cwd):
    _, out, _ = run([kvq, "--help"], cwd)
    return re.findall(r"^  ([a-z]+)  ", out.decode(), re.M)


def report_queries(kvq, cwd, db):
    _, out, _ = run([kvq, "report", "--list", "--db", db], cwd)
    return [q for q in re.findall(r"^  ([a-z_]+)\s", out.decode(), re.M)]


def cached_recording(row):
    """A study's params_json names the recording it read; one made for the case lies in the cache
    under the sha256 of an identity that includes the kvq binary's path, size and mtime
    (harness/recording/case_recording.h), so two builds never share it: compared as CACHE/."""
    return tuple(re.sub(r'"recording":"[^"]*/kvq-cache-[^"/]*/[0-9a-f]{64}\.safetensors"',
                        '"recording":"CACHE/"', v) if isinstance(v, str) else v for v in row)


def rows(db):
    con = sqlite3.connect(db)
    q = {
        "runs": "SELECT scenario, scenario_hash, status FROM runs",
        "cases": "SELECT name, op, params_json, repro FROM cases",
        "checks": "SELECT c.name, k.backend, k.reference, k.status, k.mismatches, k.max_ulp, "
                  "k.nmse, k.first_mismatch, k.expected, k.got FROM checks k "
                  "JOIN cases c ON c.id = k.case_id",
        "measurements": "SELECT c.name, m.backend, m.metric, "
                        "CASE WHEN m.unit = 's' THEN NULL ELSE m.value END, m.unit, "
                        "m.repetitions, CASE WHEN m.unit = 's' THEN NULL ELSE m.spread END "
                        "FROM measurements m JOIN cases c ON c.id = m.case_id",
    }
    out = {t: sorted(map(repr, map(cached_recording, con.execute(s).fetchall())))
           for t, s in q.items()}
    con.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--scenario", action="append")
    ap.add_argument("--work", default="/tmp/kvq-compare")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    before, after = os.path.abspath(a.before), os.path.abspath(a.after)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    diffs = 0

    def same(what, x, y):
        nonlocal diffs
        if x != y:
            diffs += 1
            print(f"DIFFERS: {what}")
            if isinstance(x, tuple):
                for i, (u, v) in enumerate(zip(x, y)):
                    if u != v:
                        print(f"  [{i}] before: {u[:400]!r}\n  [{i}] after:  {v[:400]!r}")
        return x == y

    subs = subcommands(before, root)
    same("subcommand list", subs, subcommands(after, root))
    for args in [["--help"], []] + [[s, "--help"] for s in subs]:
        same("kvq " + " ".join(args), run([before] + args, root), run([after] + args, root))
    print(f"help: kvq --help, kvq, and --help of {len(subs)} subcommands compared")

    for i, sc in enumerate(a.scenario or ["scenarios/ci.toml"]):
        dbs = {}
        for tag, kvq in (("before", before), ("after", after)):
            dbs[tag] = os.path.join(a.work, f"{tag}{i}.db")
            rc, out, _ = run([kvq, "gate", sc, "--db", dbs[tag]], root)
            lines = out.decode().rstrip("\n").split("\n")
            dbs[tag + "_summary"] = (rc, lines[-1].replace(dbs[tag], "DB"))
        same(f"gate {sc}: exit status and summary", dbs["before_summary"], dbs["after_summary"])
        rb, ra = rows(dbs["before"]), rows(dbs["after"])
        for t in rb:
            if same(f"gate {sc}: rows of {t} ({len(rb[t])} before, {len(ra[t])} after)",
                    rb[t], ra[t]):
                print(f"gate {sc}: {len(rb[t])} rows of {t} identical")
        print(f"gate {sc}: before {dbs['before_summary']}")

        db = dbs["before"]
        queries = report_queries(before, root, db)
        same("report query list", queries, report_queries(after, root, db))
        n = 0
        for q in queries:
            for fmt in ("table", "csv", "json"):
                args = ["report", q, "--db", db, "--format", fmt]
                same(f"kvq {' '.join(args)}", run([before] + args, root), run([after] + args, root))
                n += 1
        args = ["report", "--compare", "last", "last", "--db", db]
        same("kvq " + " ".join(args), run([before] + args, root), run([after] + args, root))
        print(f"gate {sc}: {n + 1} report outputs compared on the same database")

    print("identical" if diffs == 0 else f"{diffs} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
