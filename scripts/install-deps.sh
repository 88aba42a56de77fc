#!/usr/bin/env bash
# Installs the Debian packages kvq builds with; fast and silent when all are present.
# The one install script both README commands call. Nothing else is downloaded.
set -euo pipefail

packages=(meson ninja-build g++ pkg-config python3 sqlite3
          libeigen3-dev libboost-program-options-dev libsqlite3-dev catch2
          libbenchmark-dev libtomlplusplus-dev nlohmann-json3-dev libomp-dev)

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
