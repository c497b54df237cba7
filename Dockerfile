# syntax=docker/dockerfile:1
#
# The stickyd image: the release binary on distroless (glibc and libgcc only: no shell, no
# package manager; stickyd carries its own root certificates for TLS to backends), run as the
# unprivileged user 65532.
#
#   docker build -t stickyd:0.1.0 .
#   docker run --rm -v "$PWD/conf:/etc/stickyd:ro" -p 8080:8080 stickyd:0.1.0
#   docker run --rm -v "$PWD/conf:/etc/stickyd:ro" stickyd:0.1.0 check
#
# The config is read from /etc/stickyd/stickyd.toml (mounted; the image ships none), and so are
# the key files it names. deploy/kubernetes runs this image.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target directory are build caches, so a rebuild compiles only what
# changed; the binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin stickyd \
    && install -D -m 0755 target/release/stickyd /out/stickyd
# The shipped example config must validate with the binary just built. Its keys are a file
# beside it and an environment variable: both get a throwaway value that lives in this stage
# only (the image never contains a key).
RUN printf '%s\n' 'image-build-check-only-0123456789abcdef' > config/key.current \
    && STICKYD_KEY_PREVIOUS='image-build-check-only-fedcba9876543210' \
       /out/stickyd check --config config/example.toml \
    && rm config/key.current

# glibc and libgcc of the same Debian release as the build stage; user 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/stickyd /stickyd
USER 65532:65532
# Client traffic ([server] listen) and the admin API with /healthz and /readyz ([admin] listen),
# as deploy/kubernetes/stickyd.toml sets them.
EXPOSE 8080 9901
ENTRYPOINT ["/stickyd", "--config", "/etc/stickyd/stickyd.toml"]
