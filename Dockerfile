# flashgrab container image: build with cargo, run on a slim Debian.
# Used by docker-compose.yml (services `flashgrab` and `migrate`).
#   docker build -t flashgrab:local .
#   docker run --rm flashgrab:local --help
# Migrations (migrations/) and Lua scripts (lua/) are compiled into the
# binary, so the runtime image needs nothing besides it and CA certificates.

FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace (see .dockerignore): the manifest names the loadtest
# member and the benches, so cargo needs them to load the workspace.
COPY . .
RUN cargo build --release --locked -p flashgrab \
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
ENTRYPOINT ["flashgrab"]
CMD ["serve"]
