#!/usr/bin/env bash
# Brings up the local services the tests and demo need (RabbitMQ, moto) and waits for both. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

RABBIT_HOST=127.0.0.1
RABBIT_PORT=5672
RABBIT_WAIT_SECS=90
MOTO_VERSION=5.2.5
MOTO_HOST=127.0.0.1
MOTO_PORT="${MOTO_PORT:-5000}"
MOTO_URL="http://${MOTO_HOST}:${MOTO_PORT}"
# A second moto without AWS managed policies, for tests that create many accounts and never
# attach a managed policy: loading them costs moto about 100 ms of CPU per new account.
MOTO_FAST_PORT="${MOTO_FAST_PORT:-5001}"
MOTO_WAIT_SECS=30
VENV=.venv

log() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH"

# --- probes (python3, since curl/nc may be absent) ---------------------------

# Succeeds when the broker speaks AMQP: send the 0-9-1 protocol header and
# expect a method frame (Connection.Start) back. Stronger than a bare TCP connect.
amqp_up() {
  python3 - "$RABBIT_HOST" "$RABBIT_PORT" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.settimeout(3)
s.sendall(b"AMQP\x00\x00\x09\x01")
data = s.recv(7)
s.close()
sys.exit(0 if data[:1] == b"\x01" else 1)
PY
}

tcp_up() {
  python3 - "$1" "$2" <<'PY' >/dev/null 2>&1
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
PY
}

# Succeeds when moto's management API answers 200 (at $1, default MOTO_URL).
moto_up() {
  python3 - "${1:-$MOTO_URL}/moto-api/" <<'PY' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

# --- RabbitMQ ----------------------------------------------------------------

rabbit_ready() {
  amqp_up || return 1
  if command -v rabbitmq-diagnostics >/dev/null 2>&1; then
    rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 || return 1
  fi
}

if ! amqp_up; then
  if tcp_up "$RABBIT_HOST" "$RABBIT_PORT"; then
    log "something accepts TCP on ${RABBIT_HOST}:${RABBIT_PORT} but does not speak AMQP yet; waiting"
  else
    command -v rabbitmq-server >/dev/null 2>&1 \
      || die "RabbitMQ is not answering on ${RABBIT_HOST}:${RABBIT_PORT} and rabbitmq-server is not installed"
    log "starting rabbitmq-server -detached"
    # -detached fails if a node is already running (e.g. still booting); the wait below decides.
    rabbitmq-server -detached >/dev/null 2>&1 || log "rabbitmq-server -detached returned non-zero (node may already be running)"
  fi
  deadline=$((SECONDS + RABBIT_WAIT_SECS))
  until rabbit_ready; do
    if ((SECONDS >= deadline)); then
      die "RabbitMQ did not become ready on ${RABBIT_HOST}:${RABBIT_PORT} within ${RABBIT_WAIT_SECS}s (see /var/log/rabbitmq/)"
    fi
    sleep 1
  done
fi

# `check` reads the policies in force through RabbitMQ's management API; enabling the plugin on
# a running node does not restart it.
RABBIT_MANAGEMENT_PORT=15672
if ! tcp_up "$RABBIT_HOST" "$RABBIT_MANAGEMENT_PORT"; then
  command -v rabbitmq-plugins >/dev/null 2>&1 \
    || die "the management API is not answering on ${RABBIT_HOST}:${RABBIT_MANAGEMENT_PORT} and rabbitmq-plugins is not installed"
  log "enabling rabbitmq_management"
  rabbitmq-plugins enable rabbitmq_management >/dev/null || die "rabbitmq-plugins enable rabbitmq_management failed"
  deadline=$((SECONDS + RABBIT_WAIT_SECS))
  until tcp_up "$RABBIT_HOST" "$RABBIT_MANAGEMENT_PORT"; do
    ((SECONDS < deadline)) || die "the management API did not answer on ${RABBIT_HOST}:${RABBIT_MANAGEMENT_PORT} within ${RABBIT_WAIT_SECS}s"
    sleep 1
  done
fi

# --- moto ----------------------------------------------------------------------

moto_installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true
}

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtualenv $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (on Debian, install python3-venv)"
fi
if [[ ! -x "$VENV/bin/moto_server" || "$(moto_installed_version)" != "$MOTO_VERSION" ]]; then
  log "installing moto[server]==${MOTO_VERSION} into $VENV (may take a minute)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==${MOTO_VERSION}" \
    || die "pip install moto[server]==${MOTO_VERSION} failed"
fi
# tests/it/deploy.rs validates the Kubernetes manifests with kubernetes-validate (it ships the
# Kubernetes JSON schemas, so it needs no network) through scripts/validate-manifests.py.
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("kubernetes-validate") != sys.argv[1])' \
    "$KUBERNETES_VALIDATE_VERSION" 2>/dev/null; then
  log "installing kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" \
    || die "pip install kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} failed"
fi
installed="$(moto_installed_version)"
[[ "$installed" == "$MOTO_VERSION" ]] || die "expected moto ${MOTO_VERSION} in $VENV, found '${installed:-none}'"

# The worker attaches AWS managed policies (AdministratorAccess by default): moto must load them.
managed_policies_loaded() {
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "$VENV/bin/python" - "$MOTO_URL" <<'PY' >/dev/null 2>&1
import sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1")
iam.get_policy(PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
PY
}

if moto_up && ! managed_policies_loaded; then
  old_pid="$(cat target/moto.pid 2>/dev/null || true)"
  if [[ -n "$old_pid" ]] && kill -0 "$old_pid" 2>/dev/null; then
    log "restarting moto_server (pid ${old_pid}): it was started without AWS managed policies"
    kill "$old_pid"
    while kill -0 "$old_pid" 2>/dev/null; do sleep 0.2; done
  else
    die "a moto on ${MOTO_URL} runs without AWS managed policies and was not started by this script; stop it or set MOTO_PORT"
  fi
fi

# start_moto PORT NAME MANAGED_POLICIES: starts moto_server on PORT unless one answers there;
# pid and log in target/NAME.pid and target/NAME.log.
start_moto() {
  local port="$1" name="$2" managed="$3" url="http://${MOTO_HOST}:$1"
  if moto_up "$url"; then return 0; fi
  if tcp_up "$MOTO_HOST" "$port"; then
    die "port ${port} is in use by something that is not moto (no 200 from ${url}/moto-api/)"
  fi
  mkdir -p target
  log "starting moto_server on ${url} (log: target/${name}.log)"
  # setsid + nohup so it outlives this script; all fds redirected so callers' pipes are not held open.
  MOTO_IAM_LOAD_MANAGED_POLICIES="$managed" nohup setsid "$VENV/bin/moto_server" -H "$MOTO_HOST" -p "$port" \
    </dev/null >"target/${name}.log" 2>&1 &
  local pid=$!
  echo "$pid" >"target/${name}.pid"
  local deadline=$((SECONDS + MOTO_WAIT_SECS))
  until moto_up "$url"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "target/${name}.log" >&2 || true
      die "moto_server (pid ${pid}) exited during startup; see target/${name}.log"
    fi
    if ((SECONDS >= deadline)); then
      die "moto_server did not answer on ${url}/moto-api/ within ${MOTO_WAIT_SECS}s; see target/${name}.log"
    fi
    sleep 0.5
  done
}

start_moto "$MOTO_PORT" moto true
start_moto "$MOTO_FAST_PORT" moto-fast false

echo "services: rabbitmq ${RABBIT_HOST}:${RABBIT_PORT} up, moto ${MOTO_URL} and http://${MOTO_HOST}:${MOTO_FAST_PORT} (no managed policies) up (moto ${installed})"
