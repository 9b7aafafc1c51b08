#!/usr/bin/env bash
# The test command from the README: install what is missing, build (or reuse) the cached
# Kubernetes binaries, lint, type-check and run the whole suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/install-helm.sh  # Helm + kubernetes-validate for tests/test_chart*.py; cached
bash scripts/build-kubernetes.sh  # ~20 min the first time; a --version check when cached
ruff check imagewarden tests bench
mypy
python3 -m pytest "$@"
