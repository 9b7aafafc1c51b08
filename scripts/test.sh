#!/usr/bin/env bash
# The test command from the README: install what is missing, build (or reuse) the cached
# Kubernetes binaries, lint, type-check and run the whole suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
ruff check imagewarden tests bench
mypy
python3 -m pytest "$@"
