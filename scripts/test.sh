#!/usr/bin/env bash
# The project's test command: starts local services (RabbitMQ, moto), then runs the Rust test suite against them.
set -euo pipefail
cd "$(dirname "$0")/.."

trap 'echo "test.sh: done in ${SECONDS}s"' EXIT

scripts/services.sh

export MOTO_ENDPOINT="http://127.0.0.1:${MOTO_PORT:-5000}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --no-fail-fast)
else
  runner=(cargo test --no-fail-fast)
fi

status=0
"${runner[@]}" "$@" || status=$?
exit "$status"
