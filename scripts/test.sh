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

# Start from a broker without the queues of earlier test runs: each test declares its own
# (`test-orders.<id>…`, `test.results.<id>…`, `test.events.<id>`) and deletes them when it ends,
# but a test that failed half-way leaves them. Hundreds of leftover quorum queues make the
# broker restart of the `disruptive` tests slow. Only those names are deleted.
python3 - <<'PY'
import base64, json, urllib.parse, urllib.request
base = "http://127.0.0.1:15672/api/queues/%2F"
auth = "Basic " + base64.b64encode(b"guest:guest").decode()
def call(method, url):
    request = urllib.request.Request(url, method=method, headers={"Authorization": auth})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()
names = [q["name"] for q in json.loads(call("GET", base + "?columns=name"))]
left = [n for n in names if n.startswith(("test-orders.", "test.results.", "test.events."))]
for name in left:
    try:
        call("DELETE", base + "/" + urllib.parse.quote(name, safe=""))
    except Exception as error:
        print(f"test.sh: could not delete leftover queue {name}: {error}")
if left:
    print(f"test.sh: deleted {len(left)} queues that earlier test runs left behind")
PY

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
