#!/usr/bin/env bash
# Re-resolve qasr's dependencies (with the test extras) to the newest releases pyproject.toml allows,
# in a throw-away virtual environment, and write them to the lock file the Makefile installs from.
#
#   scripts/lock.sh PYTHON TORCH_INDEX LOCK
#
# torch stays at the version already in the lock unless TORCH_VERSION is set; run `make test` after.
set -euo pipefail
python=$1 index=$2 lock=$3
torch_version=${TORCH_VERSION:-$(sed -n 's/^torch==//p' "$lock")}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade pip setuptools
"$(dirname "$0")/install-torch.sh" "$tmp/venv/bin/pip" "$torch_version" "$index"
"$tmp/venv/bin/pip" install -q --no-build-isolation -e ".[test]"
{
    echo "# qasr's tested dependency set: a pip constraints file (pip install -c requirements/lock.txt)."
    echo "# Written by 'make lock' on $(date -u +%Y-%m-%d) with $("$tmp/venv/bin/python" --version); do not edit by hand."
    echo "# torch is pinned by version only: the CPU build (+cpu) and the CUDA build both satisfy it."
    "$tmp/venv/bin/pip" freeze --all --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/' | sort -f
} > "$lock"
echo "wrote $lock"
