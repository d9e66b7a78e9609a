#!/usr/bin/env bash
# The demo: brings up RabbitMQ and moto, builds, runs the worker on the sample orders in
# examples/orders/ (SPAM; ECAM with an IAM user; ECAM with the root user), prints each result
# event readably, then stops the worker with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
echo "demo: building (the first build takes a few minutes)" >&2
cargo build --quiet --bin aws-account-worker --example demo

# AWS is moto; the SDK's standard variables point the worker at it.
export AWS_ENDPOINT_URL="http://127.0.0.1:${MOTO_PORT:-5000}"
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
# A fresh payer account in moto with an organization and an SCP: its credentials and the SCP id.
eval "$(target/debug/examples/demo setup)"

mkdir -p target/demo
target/debug/aws-account-worker --config examples/demo.toml run 2>target/demo/worker.log &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null || true' EXIT

target/debug/examples/demo publish examples/orders/*.json

# What an operator's Prometheus would scrape (observability.listen in examples/demo.toml).
listen="$(sed -n 's/^listen = "\(.*\)"/\1/p' examples/demo.toml)"
python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
  "http://${listen:-127.0.0.1:9898}/metrics" >target/demo/metrics.txt
echo "demo: the worker's counts (all of /metrics is in target/demo/metrics.txt):" >&2
grep -E '^aws_account_worker_(orders|aws_calls)' target/demo/metrics.txt >&2 || true

kill -TERM "$worker"
status=0
wait "$worker" || status=$?
trap - EXIT
echo "demo: worker stopped with exit status ${status}; its log is target/demo/worker.log" >&2
exit "$status"
