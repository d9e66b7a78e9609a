# syntax=docker/dockerfile:1
# Container image for aws-account-worker: multi-stage build (Rust builder -> slim Debian runtime).

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

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin worker

COPY --from=builder /out/aws-account-worker /usr/local/bin/aws-account-worker
COPY config/default.toml /app/config/default.toml

WORKDIR /app
USER 10001:10001

# Observability listener (WORKER__OBSERVABILITY__LISTEN): health and metrics.
EXPOSE 9898

# TODO(observability): add a HEALTHCHECK against the HTTP health endpoint
# (GET /healthz on :9898) once it lands with the observability work. The runtime
# image deliberately has no curl/wget, so it will need either a small
# `aws-account-worker healthcheck` subcommand (HEALTHCHECK CMD ["aws-account-worker", "healthcheck"])
# or an orchestrator-level probe. That subcommand does not exist yet, so no HEALTHCHECK here.

ENTRYPOINT ["aws-account-worker"]
CMD ["run"]
