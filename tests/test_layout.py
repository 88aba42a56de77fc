#!/usr/bin/env python3
"""Include direction (harness/README.md): every #include "X" of the C++ sources under reference/,
verify/, backends/, bench/ and harness/ points down this list of layers (or within its own):

  harness/cli -> bench -> harness/run -> harness/studies -> harness/store -> harness/recording
  -> harness/scenario -> harness/model -> harness/io -> backends -> verify -> reference

Fails, listing FILE:LINE and the arrow, on an include that points up the list, on an include of a
file that does not exist, and on a C++ file in a folder the list does not place. tests/, fuzz/
and tools/ sit above everything and are not checked. `--graph` prints the folder arrows found.
"""
import os
import re
import sys

LAYERS = ["reference", "verify", "backends", "harness/io", "harness/model", "harness/scenario",
          "harness/recording", "harness/store", "harness/studies", "harness/run", "bench",
          "harness/cli"]
# Arrows against the direction that are known, with why; each one is a debt to remove.
EXCEPTIONS = {
    ("harness/scenario", "harness/studies"):
        "the loader reads the study ops' names and keys from harness/studies/studies.h "
        "(issue 16 step 2 moves the key table into harness/scenario/)",
}
SOURCES = re.compile(r"\.(h|cpp|cu|cuh)$")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def layer(path):
    """The layer of a repository path: the longest LAYERS entry it lies under, else None."""
    best = None
    for name in LAYERS:
        if path == name or path.startswith(name + "/"):
            if best is None or len(name) > len(best):
                best = name
    return best


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rank = {name: i for i, name in enumerate(LAYERS)}
    errors, arrows = [], {}
    for top in ("reference", "verify", "backends", "bench", "harness"):
        for folder, _, names in os.walk(os.path.join(root, top)):
            for name in sorted(names):
                if not SOURCES.search(name):
                    continue
                path = os.path.relpath(os.path.join(folder, name), root)
                src = layer(path)
                if src is None:
                    errors.append(f"{path}: in no layer of tests/test_layout.py (add its folder)")
                    continue
                with open(os.path.join(root, path), encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        target = m.group(1)
                        if target == "results_sql.h":  # generated from results/ by the build
                            continue
                        if not os.path.isfile(os.path.join(root, target)):
                            errors.append(f"{path}:{n}: includes {target}, which does not exist "
                                          "(includes are written from the repository root)")
                            continue
                        dst = layer(target)
                        if dst is None:
                            errors.append(f"{path}:{n}: includes {target}, in no layer")
                            continue
                        if dst != src:
                            arrows[(src, dst)] = arrows.get((src, dst), 0) + 1
                            if rank[dst] > rank[src] and (src, dst) not in EXCEPTIONS:
                                errors.append(f"{path}:{n}: {src} -> {dst} ({target}) points up "
                                              "the layers")
    if "--graph" in sys.argv:
        for (s, d), count in sorted(arrows.items(), key=lambda a: (-rank[a[0][0]], -rank[a[0][1]])):
            note = "  (exception: " + EXCEPTIONS[(s, d)] + ")" if (s, d) in EXCEPTIONS else ""
            print(f"{s} -> {d}: {count}{note}")
    for (s, d) in EXCEPTIONS:
        if (s, d) not in arrows:
            errors.append(f"exception {s} -> {d} no longer used: remove it from tests/test_layout.py")
    for e in errors:
        print(e)
    print(f"{sum(arrows.values())} includes across {len(arrows)} folder arrows, "
          f"{len(errors)} against the direction")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
