# The stampede image for deploy/kubernetes/: a static-enough release binary on a slim base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/stampede /usr/local/bin/stampede
COPY profiles /profiles
ENTRYPOINT ["stampede"]
CMD ["--help"]
