#!/usr/bin/env bash
# The project's test command: starts local services (RabbitMQ, moto), then runs the Rust test suite against them.
set -euo pipefail
cd "$(dirname "$0")/.."

trap 'echo "test.sh: done in ${SECONDS}s"' EXIT

# Start from fresh motos: every account moto holds stays in its memory (with AWS managed policies
# loaded, about 100 MB each), and each test makes its own payer anyway. Restarting is quicker
# than moto's own reset once it holds many accounts. Only motos this script started are stopped.
for name in moto moto-fast; do
  pid="$(cat "target/${name}.pid" 2>/dev/null || true)"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -q moto_server "/proc/${pid}/cmdline" 2>/dev/null; then
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
done

scripts/services.sh

export MOTO_ENDPOINT="http://127.0.0.1:${MOTO_PORT:-5000}"
export MOTO_FAST_ENDPOINT="http://127.0.0.1:${MOTO_FAST_PORT:-5001}"

export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

# Two passes: everything else in parallel, then the tests that restart the shared broker
# (module `disruptive`), alone and one at a time.
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast -E 'not test(/^disruptive::/)' "$@" || status=$?
  cargo nextest run --no-fail-fast --test-threads 1 -E 'test(/^disruptive::/)' "$@" || status=$?
else
  cargo test --no-fail-fast "$@" -- --skip disruptive:: || status=$?
  cargo test --no-fail-fast --test it "$@" -- --test-threads 1 disruptive:: || status=$?
fi
exit "$status"
