# syntax=docker/dockerfile:1
# Container image for aws-account-worker: multi-stage build (Rust builder -> slim Debian
# runtime), running as a non-root user, with a HEALTHCHECK on /healthz. See deploy/README.md.

# ---- builder ------------------------------------------------------------------
FROM rust:1-slim-bookworm AS builder

# aws-lc-sys (pulled in by the AWS SDK / rustls) compiles C code: it needs a C
# toolchain and cmake. pkg-config for any other -sys crates.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# config/default.toml is built into the binary as its defaults.
COPY config ./config

# BuildKit cache mounts keep the cargo registry and compiled dependencies between
# builds, so only changed crates are rebuilt. The target dir lives in the cache,
# so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked --bin aws-account-worker \
    && install -D -m 0755 target/release/aws-account-worker /out/aws-account-worker

# ---- runtime ------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to AWS and to an amqps:// broker.
# curl: only for the HEALTHCHECK below. Weighed: bash's /dev/tcp needs a hand-written HTTP
# request, a status-line parser and a separate timeout, and passes on any server that answers;
# `curl -f` checks the HTTP status, follows the protocol and has its own timeout, for a few MB
# (installed without recommends). The Kubernetes manifests probe over HTTP themselves and do
# not use it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin worker

COPY --from=builder /out/aws-account-worker /usr/local/bin/aws-account-worker
COPY config/default.toml /app/config/default.toml

WORKDIR /app
USER 10001:10001

# The configuration: the binary has config/default.toml built in as its defaults, and reads
# /app/config/default.toml (the working directory's config/default.toml) over them; mount a
# file and pass --config FILE to change keys, or set WORKER__SECTION__KEY variables.
# In a container the observability listener must accept connections from outside the loopback
# interface (probes, Prometheus), so it listens on all interfaces; the HEALTHCHECK below
# assumes port 9898.
ENV WORKER__OBSERVABILITY__LISTEN=0.0.0.0:9898

# Observability listener: /metrics, /healthz, /readyz (docs/contract.md §9).
EXPOSE 9898

# Liveness of the process (/healthz), not readiness: a worker waiting for its broker is alive.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "3", "--output", "/dev/null", "http://127.0.0.1:9898/healthz"]

# `aws-account-worker run` by default; `docker run IMAGE check` or `... replay --dry-run` run
# the other subcommands with the same configuration.
ENTRYPOINT ["aws-account-worker"]
CMD ["run"]
