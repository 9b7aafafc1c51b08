#!/usr/bin/env bash
# The long hostile-input run, on demand (CI runs the bounded one on every submission).
#
#   scripts/fuzz-long.sh [SECONDS]
#
# 1. hypothesis with the "long" profiles (IMAGEWARDEN_FUZZ=long: tens of thousands of examples
#    per test, random, failures kept in .hypothesis/ and replayed first next time) over
#    tests/test_fuzz.py and the generated-tricks test of tests/test_no_connection.py;
# 2. atheris (coverage-guided, libFuzzer) over parse, the checker, policy rules and config for
#    SECONDS (default 600) when `pip install atheris` works on this machine; skipped otherwise.
# Exits non-zero when either finds a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"

echo "== hypothesis, long profile"
IMAGEWARDEN_FUZZ=long python3 -m pytest -q -p no:cacheprovider \
  tests/test_fuzz.py "tests/test_no_connection.py::test_generated_tricks_never_reach_a_decoy"

echo "== atheris, ${seconds} s"
if ! python3 -c "import atheris" 2>/dev/null; then
  pip install --quiet atheris || true
fi
if python3 -c "import atheris" 2>/dev/null; then
  corpus="$(mktemp -d -t imagewarden-atheris-XXXXXX)"
  python3 -m tests.test_fuzz -max_total_time="${seconds}" -rss_limit_mb=2048 "${corpus}"
  echo "atheris: no crash in ${seconds} s (corpus kept in ${corpus})"
else
  echo "atheris is not installable here; the hypothesis run above is the long run"
fi
