#!/usr/bin/env python3
"""The documentation cannot rot silently: runs every command of README.md and docs/*.md that is
marked runnable, and checks that the repository is self-contained.

A fenced block whose info string is `sh runnable` (three backticks, then `sh runnable`) is run
line by line, in order, from the root of a scratch copy of the repository: a temporary folder
holding links to the repository's data/, scenarios/, docs/, tools/ and build folder, and an
empty results/, with the built `kvq` first on PATH. All runnable blocks of one file share that
folder, so a later block may use what an earlier one wrote. A line ending in a backslash
continues on the next; lines starting with `#` are comments. Every command must exit 0; the
first that does not fails the test, named by file and line. Mark only commands that take
seconds on small inputs (data/, `kvq synth`); long jobs stay in plain `sh` blocks.

Also checked: README.md has runnable blocks (the check is never vacuous); no file of the
repository names a path outside it (the workshop folder the project came from); and every file
in data/ has the sha256 listed in data/SOURCES.md, and only those files are there.

Run by meson (tests/meson.build) with $KVQ_BIN and $KVQ_SOURCE_ROOT set.
"""
import glob
import hashlib
import os
import re
import subprocess
import sys
import tempfile

FENCE = re.compile(r"^```(.*)$")
TIMEOUT_S = 120
failures = []


def fail(what):
    print("FAIL " + what)
    failures.append(what)


def runnable_commands(path):
    """(line number, command) of every command in the file's `sh runnable` blocks."""
    commands, inside, pending, start = [], False, "", 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            fence = FENCE.match(line)
            if fence:
                inside = not inside and fence.group(1).split() == ["sh", "runnable"]
                continue
            if not inside or (not pending and (not line.strip() or line.lstrip().startswith("#"))):
                continue
            if not pending:
                start = number
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            commands.append((start, pending + line))
            pending = ""
    return commands


def scratch_root(root, build, folder):
    for name in ("data", "scenarios", "docs", "tools"):
        os.symlink(os.path.join(root, name), os.path.join(folder, name))
    os.symlink(build, os.path.join(folder, "build"))
    os.mkdir(os.path.join(folder, "results"))


def run_file(root, build, path, env):
    commands = runnable_commands(path)
    name = os.path.relpath(path, root)
    with tempfile.TemporaryDirectory(prefix="kvq_test_docs_") as folder:
        scratch_root(root, build, folder)
        for line, command in commands:
            try:
                done = subprocess.run(["bash", "-c", "set -o pipefail; " + command], cwd=folder,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, timeout=TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                fail(f"{name}:{line}: `{command}` ran longer than {TIMEOUT_S} s")
                return len(commands)
            if done.returncode != 0:
                fail(f"{name}:{line}: `{command}` exited {done.returncode}:\n"
                     f"{done.stderr.strip()[-2000:]}")
                return len(commands)
            print(f"ok   {name}:{line}: {command}")
    return len(commands)


def check_no_outside_paths(root):
    # Built from parts so that this file does not match itself.
    outside = re.compile("|".join(re.escape(p) for p in
                                  ["../" + "shared", "/work" + "/", "KVQ_" + "SHARED"]))
    # The repository's files: tracked, or new and not ignored (build folders, databases and
    # virtual environments are ignored). data/ holds third-party files: only its SOURCES.md is
    # the project's text.
    listed = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], stdout=subprocess.PIPE, check=False)
    if listed.returncode != 0:
        fail("git ls-files failed: the check needs a git checkout")
        return
    for rel in sorted(set(listed.stdout.decode().split("\0")) - {""}):
        path = os.path.join(root, rel)
        if (rel.startswith("data/") and rel != "data/SOURCES.md") or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError:
            continue  # binary files (images)
        for number, line in enumerate(lines, 1):
            if outside.search(line):
                fail(f"{rel}:{number} names a path outside the repository: {line.strip()}")


def check_data(root):
    data = os.path.join(root, "data")
    with open(os.path.join(data, "SOURCES.md"), encoding="utf-8") as f:
        listed = dict((name, digest) for digest, name in
                      re.findall(r"^([0-9a-f]{64})  (\S+)$", f.read(), re.M))
    present = {n for n in os.listdir(data) if n != "SOURCES.md"}
    if present != set(listed):
        fail(f"data/ holds {sorted(present)}, data/SOURCES.md lists {sorted(listed)}")
    for name in sorted(present & set(listed)):
        with open(os.path.join(data, name), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != listed[name]:
            fail(f"data/{name}: sha256 {digest}, data/SOURCES.md says {listed[name]}")
    print(f"ok   data/: {len(listed)} files with the sha256 of data/SOURCES.md")


def main():
    binary = os.environ.get("KVQ_BIN", "")
    root = os.environ.get("KVQ_SOURCE_ROOT", "")
    if not os.path.isfile(binary) or not os.path.isdir(root):
        print("KVQ_BIN / KVQ_SOURCE_ROOT not set (run through meson test)")
        return 1
    build = os.path.dirname(os.path.dirname(os.path.abspath(binary)))  # BUILD/harness/kvq
    env = dict(os.environ, PATH=os.path.dirname(os.path.abspath(binary)) + os.pathsep +
               os.environ.get("PATH", ""))
    counts = {}
    for path in [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs",
                                                                                  "*.md"))):
        counts[os.path.relpath(path, root)] = run_file(root, build, path, env)
    if counts.get("README.md", 0) == 0:
        fail("README.md has no `sh runnable` block")
    print("runnable commands: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    check_no_outside_paths(root)
    check_data(root)
    if failures:
        print(f"{len(failures)} failures")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
