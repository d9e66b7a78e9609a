#!/usr/bin/env bash
# The benchmark (docs/benchmark.md): brings up RabbitMQ and moto (scripts/services.sh),
# builds the worker and examples/bench.rs in release, and prints one `name value` line per
# figure on standard output. It measures; it asserts no timing. About 10 minutes.
# BENCH_ONLY=ready,cpu,moto3,rss,overhead,orgs,slots picks phases; BENCH_ORDERS (150),
# BENCH_ORG_ORDERS (30) and BENCH_SLOT_ORDERS (40) change the order counts; BENCH_PERF=1
# profiles the one-worker phase with perf, BENCH_HEAPTRACK=1 runs the workers under heaptrack.
# MOTO_PORT and MOTO_FAST_PORT (5000, 5001) say where scripts/services.sh starts or finds moto.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || { echo "bench: cargo not found on PATH (install Rust with rustup)" >&2; exit 1; }
scripts/services.sh
echo "bench: building in release (the first build takes several minutes)" >&2
cargo build --quiet --release --bin aws-account-worker --example bench
export MOTO_FAST_ENDPOINT="http://127.0.0.1:${MOTO_FAST_PORT:-5001}"
echo "bench: running; the workers' logs go to target/bench/" >&2
exec target/release/examples/bench
