# syntax=docker/dockerfile:1
# cplb image: a static-ish Rust binary on distroless (glibc, no shell).
#
#   docker build -t cplb:0.1.0 .
#   docker run --rm --network host cplb:0.1.0 --config /etc/cplb/cplb.yaml --check

# The base images are build arguments: a registry's by default. Where none
# is reachable, build the runtime stage on a local base with a binary cargo
# built, as tests/image.rs does:
#   podman build --target runtime --build-arg RUNTIME_IMAGE=<local base> \
#     --build-arg BINARY_FROM=<image holding /src/target/release/cplb> .
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12
ARG BINARY_FROM=build

# Build the way CI does: the stable toolchain (no rust-toolchain file pins
# another), a release build, and the committed Cargo.lock (--locked).
FROM ${RUST_IMAGE} AS build
# clang and libbpf's headers: build.rs compiles the kernel data plane's
# programs (bpf/cplb.bpf.c); CPLB_BPF=require fails the build without them
# rather than shipping an image whose kernel mode is refused.
RUN apt-get update && apt-get install -y --no-install-recommends clang libbpf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY bpf bpf
# benches/ is declared in Cargo.toml ([[bench]]), so cargo needs it to read
# the manifest even for a plain build.
COPY benches benches
COPY src src
# The product without its tools (demo, simulate, the stand-in API server):
# smaller, and nothing in the image that a node does not run.
RUN CPLB_BPF=require cargo build --release --locked --no-default-features

# The binary: the build stage's, unless BINARY_FROM names another image.
FROM ${BINARY_FROM} AS binary

# cc-debian12 carries the glibc and libgcc the binary links against, and
# nothing else: no shell, no package manager.
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=binary /src/target/release/cplb /usr/local/bin/cplb
# The example config; deployments mount their own over /etc/cplb.
COPY config/cplb.yaml /etc/cplb/cplb.yaml
# A uid of cplb's own, not distroless' nonroot (65532), which every image
# built on it shares: a process of the same uid may join cplb's
# SO_REUSEPORT listeners and take a share of its connections
# (docs/deployment.md, "Port squatting").
USER 58443:58443
ENTRYPOINT ["/usr/local/bin/cplb"]
CMD ["--config", "/etc/cplb/cplb.yaml"]
