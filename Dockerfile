# Quota's container image: build in a Rust image, run in a small Debian one as a non-root user.
#   docker build -t quota .
#   docker run -p 8080:8080 -v quota-data:/var/lib/quota quota
# The runtime stage holds the binary, CA certificates (for the providers' HTTPS APIs) and
# nothing else; the SQLite default lives in the /var/lib/quota volume. See compose.yaml for
# PostgreSQL and Redis.

FROM rust:1-bookworm AS build
WORKDIR /src
# No debug info and a stripped binary in the image (the workspace's release profile keeps line
# tables for profiling on a developer's machine).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin quota \
    && cp target/release/quota /usr/local/bin/quota

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/quota --shell /usr/sbin/nologin quota \
    && mkdir -p /var/lib/quota \
    && chown quota:quota /var/lib/quota \
    && chmod 0700 /var/lib/quota
COPY --from=build /usr/local/bin/quota /usr/local/bin/quota
USER quota
WORKDIR /var/lib/quota
VOLUME /var/lib/quota
ENV QUOTA_BIND=0.0.0.0 \
    QUOTA_PORT=8080 \
    QUOTA_LOG_FORMAT=json
EXPOSE 8080
# /healthz over plain bash (no curl in the image): 200 means the process serves requests.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${QUOTA_PORT:-8080} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["quota"]
CMD ["serve"]
