# syntax=docker/dockerfile:1
# flashgrab container image: build with cargo, run on a slim Debian.
# Used by docker-compose.yml (services flashgrab-1, flashgrab-2, persist,
# migrate).
#   docker build -t flashgrab:local .
#   docker run --rm flashgrab:local --help
# The Lua scripts (lua/, include_str!) and the migrations (migrations/,
# sqlx::migrate!) are compiled into the binary, so the runtime image needs
# nothing besides it and CA certificates.

FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace (see .dockerignore): the manifest names the loadtest
# member and the benches, so cargo needs them to load the workspace.
COPY . .
# BuildKit cache mounts keep the registry and the target folder between
# builds (a rebuild after a source change compiles only flashgrab itself);
# the binary is copied out because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p flashgrab \
    && install -D -m 0755 target/release/flashgrab /out/flashgrab

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin flashgrab
COPY --from=builder /out/flashgrab /usr/local/bin/flashgrab
USER flashgrab:flashgrab
ENV FLASHGRAB_LISTEN=0.0.0.0:8080
EXPOSE 8080
# SIGTERM (docker stop) starts a graceful shutdown; see stop_grace_period
# in docker-compose.yml.
STOPSIGNAL SIGTERM
ENTRYPOINT ["flashgrab"]
CMD ["serve"]
