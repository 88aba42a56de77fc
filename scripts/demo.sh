#!/usr/bin/env bash
# The main job: install what is missing, build the kvq command line (nothing else), run the
# default scenario into results/kvq.db.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh kvq
"${KVQ_BUILD:-build}/harness/kvq" run scenarios/demo.toml --db results/kvq.db "$@"
