# The scheduler: HTTP API, submission consumer, outbox relay and reaper.
# It never links libtorch, so the image is a Debian slim base, CA
# certificates, curl for health checks, and one binary.
#
#   docker build -f deploy/docker/scheduler.Dockerfile -t glowline/scheduler .

FROM rust:1-bookworm AS build
WORKDIR /opt/glowline
COPY . .
# Only the scheduler and what it depends on are compiled: no tch, no torch.
RUN cargo build --release --locked -p scheduler \
    && cp target/release/scheduler /usr/local/bin/scheduler

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin glowline
COPY --from=build /usr/local/bin/scheduler /usr/local/bin/scheduler
COPY configs/scheduler.toml /etc/glowline/scheduler.toml
USER 10001
# The configuration's loopback addresses are overridden by the
# environment in containers (see deploy/compose.yaml and deploy/k8s/).
ENV GLOWLINE_SCHEDULER_CONFIG=/etc/glowline/scheduler.toml \
    GLOWLINE_SCHEDULER__HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/scheduler"]
