# syntax=docker/dockerfile:1
# offramp: a release build with the committed Cargo.lock, run from a distroless nonroot image.
# deploy/check-image checks these stages against CI's build (no Docker engine on CI machines).

# Same Rust as Cargo.toml's rust-version and CI; bookworm's glibc (2.36) is the runtime's.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The workspace: the service, plus bench/ and benches/ whose manifests and targets cargo resolves.
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
COPY benches/ benches/
COPY bench/Cargo.toml bench/Cargo.toml
COPY bench/src/ bench/src/
# Compiled into the binary (include_str!): the defaults, the service catalogue, the knowledge.
COPY config/base.toml config/base.toml
COPY cds-hooks/services.json cds-hooks/services.json
COPY cds-hooks/knowledge/ cds-hooks/knowledge/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin offramp \
    && install -D -m 0755 target/release/offramp /out/offramp

# glibc, libgcc and CA certificates, no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/offramp /usr/local/bin/offramp
# The knowledge tables are built in; this copy is for reading and for `check-knowledge --knowledge`.
COPY cds-hooks/knowledge/ /usr/share/offramp/knowledge/
COPY config/container.toml /etc/offramp/offramp.toml
# Writes nothing to disk (logs and audit go to stdout), so a read-only root filesystem works.
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/offramp", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/offramp"]
CMD ["serve", "--config", "/etc/offramp/offramp.toml"]
