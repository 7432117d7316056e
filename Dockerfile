# syntax=docker/dockerfile:1
# One image, three binaries (sluice-api, sluice-worker, sluicectl); the Kubernetes
# Deployments pick one with `command:`. Build (the revision lands in sluice_build_info,
# the trace resource and the OCI labels; the build context has no .git to read it from):
#   docker build -t sluice \
#     --build-arg SLUICE_BUILD_REVISION="$(git rev-parse HEAD)" \
#     --build-arg SLUICE_VERSION=0.1.0 \
#     --build-arg SLUICE_BUILD_CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .

# ---- builder ---------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependency layer: only the manifests and the lockfile, with stub sources, so the
# crates.io dependencies are compiled once and reused until Cargo.toml/Cargo.lock change.
# The stubs and their build records are then deleted so nothing of them survives into the
# real build below.
COPY Cargo.toml Cargo.lock ./
COPY common/Cargo.toml common/Cargo.toml
COPY api/Cargo.toml api/Cargo.toml
COPY worker/Cargo.toml worker/Cargo.toml
COPY cli/Cargo.toml cli/Cargo.toml
COPY test-support/Cargo.toml test-support/Cargo.toml
RUN set -eux; \
    for crate in common api worker cli test-support; do \
      mkdir -p "$crate/src"; \
      echo 'fn main() {}' > "$crate/src/main.rs"; \
      : > "$crate/src/lib.rs"; \
    done; \
    cargo build --release --locked --workspace; \
    rm -rf common/src api/src worker/src cli/src test-support/src \
           target/release/.fingerprint/sluice-* target/release/deps/sluice* \
           target/release/deps/libsluice* target/release/sluice-* target/release/sluicectl

# Real sources. migrations/ is embedded into the binaries at compile time.
# The revision is read by common/build.rs; declared here, after the dependency layer, so
# a new revision does not invalidate the cached dependencies.
ARG SLUICE_BUILD_REVISION=unknown
ENV SLUICE_BUILD_REVISION=${SLUICE_BUILD_REVISION}
COPY common common
COPY api api
COPY worker worker
COPY cli cli
# The tests' shared harness: a workspace member, so the workspace build needs it (it is
# not in any binary).
COPY test-support test-support
COPY migrations migrations
RUN set -eux; \
    cargo build --release --locked --workspace; \
    mkdir -p /out; \
    cp target/release/sluice-api target/release/sluice-worker target/release/sluicectl /out/

# ---- runtime ---------------------------------------------------------------------------
# debian-slim rather than distroless: the API's preStop hook runs /bin/sleep in the
# container, and glibc matches the builder. Nothing else is installed.
FROM debian:bookworm-slim AS runtime
ARG SLUICE_BUILD_REVISION=unknown
ARG SLUICE_VERSION=0.1.0
ARG SLUICE_BUILD_CREATED=unknown
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Sluice: a Kubernetes-native job system (sluice-api, sluice-worker, sluicectl)" \
      org.opencontainers.image.source="https://github.com/sluice/sluice" \
      org.opencontainers.image.url="https://github.com/sluice/sluice" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Sluice" \
      org.opencontainers.image.version="${SLUICE_VERSION}" \
      org.opencontainers.image.revision="${SLUICE_BUILD_REVISION}" \
      org.opencontainers.image.created="${SLUICE_BUILD_CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# CA roots for https OTLP endpoints and HTTP targets (rustls reads the system store),
# copied from the builder rather than installed, so the image gains no package.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/ /usr/local/bin/
# Numeric uid:gid so Kubernetes' runAsNonRoot can verify it without an /etc/passwd entry.
USER 10001:10001
WORKDIR /tmp
ENV SLUICE_API_ADDR=0.0.0.0:8080 \
    SLUICE_METRICS_ADDR=0.0.0.0:9090 \
    SLUICE_LOG_FORMAT=json
EXPOSE 8080 9090
# Exec form, no shell wrapper: the binary is PID 1 and receives SIGTERM itself.
# Override with the binary you want: `docker run IMAGE sluice-worker`.
CMD ["sluice-api"]
