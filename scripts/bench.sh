#!/usr/bin/env bash
# `make bench`: criterion benchmarks against their own throwaway redis-server.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_redis
cargo bench -p paycache "$@"
