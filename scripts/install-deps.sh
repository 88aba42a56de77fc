#!/usr/bin/env bash
# Installs the Debian packages kvq builds with; fast and silent when all are present.
# The one install script both README commands call. Nothing else is downloaded, unless:
#   --hf   also makes .venv-hf (a venv of pinned torch, transformers, safetensors from PyPI) for
#          tools/record_hf.py and its test; scripts/test.sh asks for it, scripts/demo.sh does not.
set -euo pipefail

hf=0
for arg in "$@"; do
  case "$arg" in
    --hf) hf=1 ;;
    *) echo "install-deps: unknown option '$arg' (known: --hf)" >&2; exit 2 ;;
  esac
done

packages=(meson ninja-build g++ pkg-config python3 sqlite3
          libeigen3-dev libboost-program-options-dev libsqlite3-dev catch2
          libbenchmark-dev libtomlplusplus-dev nlohmann-json3-dev libomp-dev
          pybind11-dev python3-dev  # the kvq Python module (python/)
          munge slurmctld slurmd slurm-client)  # the last four: tests/test_slurm.sh

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# tools/plot.py's one dependency, for the Python on PATH (tests/test_plot.py).
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "install-deps: installing matplotlib (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check matplotlib==3.9.2 ||
    echo "install-deps: matplotlib install failed: tests/test_plot.py will be skipped" >&2
fi

((hf)) || exit 0

# The Hugging Face recorder's Python packages (tools/record_hf.py and tests/test_record_hf.py).
# PyPI's Linux torch wheel brings its CUDA runtime wheels (about 3 GB download, 7 GB
# installed); Debian's python3-torch 1.13 is too old for a transformers with Qwen3-MoE.
# transformers stays on 4.x: the recorder hooks each expert's down_proj, which 5.x fuses into
# one module. Every package is pinned (the nvidia-* and triton wheels by torch itself).
# The venv lives outside the work tree (KVQ_HF_VENV, default ~/.cache/kvq/venv-hf), so a fresh
# clone on the same machine (CI) reuses it; .venv-hf at the repository root links to it (a
# real .venv-hf directory is used as it is). Its kvq-pins.txt holds the pins it was made with:
# a second run with the same pins installs nothing.
hf_pins=(torch==2.9.1 transformers==4.57.6 safetensors==0.6.2 tokenizers==0.22.1
         huggingface-hub==0.36.2 numpy==2.4.6 certifi==2026.10.18 charset-normalizer==3.5.2
         filelock==4.2.12 fsspec==2026.9.0 hf-xet==1.8.0 idna==3.20 jinja2==3.1.6
         markupsafe==3.0.4 mpmath==1.3.0 networkx==3.6.1 packaging==26.3 pyyaml==6.0.3
         regex==2026.11.15 requests==2.34.2 sympy==1.14.0 tqdm==4.70.1
         typing-extensions==4.16.0 urllib3==2.8.0)
cd "$(dirname "$0")/.."
if [ -d .venv-hf ] && [ ! -L .venv-hf ]; then
  venv=$PWD/.venv-hf
else
  venv=${KVQ_HF_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kvq/venv-hf}
  mkdir -p "$(dirname "$venv")"
  ln -sfn "$venv" .venv-hf
fi
stamp="$venv/kvq-pins.txt"
# `pip install --no-build-isolation .` (the kvq Python module, pyproject.toml) needs the
# meson-python build backend in the venv; separate from the pins so adding it reinstalls nothing.
mesonpy() {
  "$venv/bin/python3" -c 'import mesonpy' 2>/dev/null ||
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
      meson-python==0.22.1 pyproject-metadata==0.12.1 meson==1.12.1 ||
    echo "install-deps: meson-python install failed: pip install . will not work" >&2
}
if [ -x "$venv/bin/python3" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${hf_pins[*]}" ]; then
  mesonpy
  exit 0
fi
echo "install-deps: installing torch + transformers into $venv (PyPI, ~3 GB download)" >&2
start=$(date +%s)
rm -f "$stamp"
[ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
# --no-compile: Python compiles what it imports on first use; compiling all of torch here
# would cost minutes of the CI run.
nice -n 5 "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --no-compile \
  --only-binary=:all: "${hf_pins[@]}"
echo "${hf_pins[*]}" > "$stamp"
mesonpy
echo "install-deps: $venv ready in $(( $(date +%s) - start )) s" >&2
