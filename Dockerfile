# Multi-stage build: compile in the Rust image, run from a slim Debian with CA roots and curl
# (for the health check).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# `docker build --build-arg FEATURES=otlp .` adds the OTLP span export.
ARG FEATURES=""
RUN cargo build --release --locked --bin switchyard --features "$FEATURES"

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/switchyard switchyard \
    && mkdir -p /var/lib/switchyard && chown switchyard /var/lib/switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
USER switchyard
ENV SWITCHYARD_LISTEN=0.0.0.0:8080 SWITCHYARD_DATA_DIR=/var/lib/switchyard
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --retries=5 CMD curl -sf http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["switchyard"]
CMD ["serve"]
