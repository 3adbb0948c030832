# Images of the two binaries: `docker build --target weir -t weir .` and
# `docker build --target weir-operator -t weir-operator .`.
# Not built on the project's CI machines (they have no Docker engine).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weir -p weir-operator

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/*
USER 65532:65532

FROM runtime AS weir
COPY --from=build /src/target/release/weir /usr/local/bin/weir
ENTRYPOINT ["/usr/local/bin/weir"]

FROM runtime AS weir-operator
COPY --from=build /src/target/release/weir-operator /usr/local/bin/weir-operator
ENTRYPOINT ["/usr/local/bin/weir-operator"]
CMD ["run"]
