#!/usr/bin/env bash
# The long load run, on demand (CI runs tests/test_load.py, 10 s, on every submission).
#
#   scripts/load-long.sh [SECONDS] [CONCURRENCY] [IMAGES]
#
# Starts a local registry and `imagewarden serve`, then from a separate process fires a spawn
# storm and SECONDS (default 60) of CONCURRENCY (default 1000) checks in flight over IMAGES
# (default 50) images; prints p50/p99, throughput, the service's RSS and the registry's request
# counts, and exits 1 if any invariant fails (an error or wrong verdict, more than one registry
# request per (image, TTL window), an index fetched twice, RSS over 512 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/load_service.py \
  --duration "${1:-60}" --concurrency "${2:-1000}" --images "${3:-50}" --ttl 8
