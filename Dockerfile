# rtmp-proxy container image.
#
#   docker build -t rtmp-proxy .                   # the real build: compile, then a slim runtime
#   podman build --target prebuilt -t rtmp-proxy . # local checks only: ships dist/rtmp-proxy
#                                                  # (see scripts/container-smoke)
#
# The base images are build arguments so that a machine without access to a
# registry can build from locally imported images (scripts/container-smoke);
# the defaults are the official images.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

# --- build --------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
# Pingora's zlib-ng (libz-ng-sys) is built with cmake; the rust image has the
# C compiler that aws-lc-sys also needs, but not cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, against empty crate roots: this layer is rebuilt only
# when Cargo.toml or Cargo.lock change, not on every source edit. The
# dependencies are nearly all of a cold build (on 2 busy cores: 20 minutes,
# then 1 minute for our crate).
COPY Cargo.toml Cargo.lock ./
# Cargo refuses a manifest whose [[bench]] files are missing, even to build
# only the binary; the bench sources are small and rarely change.
COPY benches/*.rs ./benches/
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin rtmp-proxy \
    && rm -rf src
COPY src ./src
# COPY keeps the files' own mtimes, which can be older than the placeholder
# build above; touching the crate roots makes cargo rebuild our crate.
# --strip-debug: the release profile's line tables make the binary 140 MB
# instead of 26 MB, and every Fargate task start pulls the image. Symbols
# stay, and panic messages carry their file:line without debug info.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin rtmp-proxy \
    && objcopy --strip-debug target/release/rtmp-proxy \
    && ./target/release/rtmp-proxy --version

# --- runtime base: everything but the binary ----------------------------------
FROM ${RUNTIME_IMAGE} AS runtime-base
# ca-certificates: the AWS SDK (Cloud Map) verifies TLS against the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot and hadolint can tell
# it is not root without reading /etc/passwd. /run/rtmp-proxy holds what the
# process writes: the rendered config, pid file and upgrade sockets.
RUN groupadd --system --gid 10001 rtmp-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin rtmp-proxy \
    && mkdir -p /run/rtmp-proxy \
    && chown 10001:10001 /run/rtmp-proxy
COPY deploy/rtmp-proxy.yaml /etc/rtmp-proxy/rtmp-proxy.yaml
COPY deploy/entrypoint.sh /usr/local/bin/rtmp-proxy-entrypoint
USER 10001:10001
# 1935 RTMP (public), 8000 GET /health (load balancer checks) and
# /health/fleet (media servers with room, for Route53 failover). The admin
# listener stays on 127.0.0.1:8001 inside the container and is not exposed.
EXPOSE 1935 8000
# SIGTERM starts the drain (see docs/aws.md); it is Docker's and
# ECS's default stop signal, stated here because the drain depends on it.
STOPSIGNAL SIGTERM
# Exec form, and the entrypoint ends in `exec rtmp-proxy`: the binary becomes
# PID 1 and receives SIGTERM/SIGQUIT itself (Pingora installs the handlers).
# Arguments after the image name are passed on, e.g. `-t` to check the config.
ENTRYPOINT ["/usr/local/bin/rtmp-proxy-entrypoint"]

# --- prebuilt: local checks without a Rust toolchain in the build --------------
# Ships a binary built on the host (copied to dist/rtmp-proxy by
# scripts/container-smoke); it must be built against glibc <= bookworm's 2.36.
# Only built when asked for with --target prebuilt (BuildKit and buildah skip
# stages the target does not need).
FROM runtime-base AS prebuilt
COPY dist/rtmp-proxy /usr/local/bin/rtmp-proxy

# --- runtime: the default target ----------------------------------------------
FROM runtime-base AS runtime
COPY --from=build /src/target/release/rtmp-proxy /usr/local/bin/rtmp-proxy
