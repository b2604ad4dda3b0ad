# syntax=docker/dockerfile:1
# mupdate: build with the Rust toolchain the project pins, run on debian-slim as a non-root
# user. Dependencies are built from the manifests alone first, so a source change does not
# rebuild them.

FROM rust:1.95-slim-bookworm AS build
# The etcd client of the `ha` feature (master failover) compiles etcd's protobuf definitions.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler=3.21.12-3+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/
RUN mkdir -p src loadtest/src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > loadtest/src/main.rs \
    && echo 'fn main() {}' > benches/store.rs \
    && echo 'fn main() {}' > benches/redb_floor.rs \
    && cargo build --release --locked -p mupdate --features ha \
    && rm -rf src loadtest/src benches
COPY . .
# The stubs' build outputs are older than the real sources; make sure cargo sees that.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p mupdate --features ha \
    && strip target/release/mupdate

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 mupdate \
    && useradd --system --uid 10001 --gid mupdate --home-dir /var/lib/mupdate \
        --shell /usr/sbin/nologin mupdate \
    && mkdir -p /var/lib/mupdate /etc/mupdate/secrets \
    && chown mupdate:mupdate /var/lib/mupdate
COPY --from=build /src/target/release/mupdate /usr/local/bin/mupdate
COPY docker/imapd.conf /etc/mupdate/imapd.conf
USER 10001:10001
WORKDIR /var/lib/mupdate
# The redb store, the instance lock, telemetry logs and the kick socket live here.
VOLUME ["/var/lib/mupdate"]
# MUPDATE, and the sidecar (health, /metrics).
EXPOSE 3905 8390
ENTRYPOINT ["/usr/local/bin/mupdate", "-C", "/etc/mupdate/imapd.conf"]
# A master; give no argument for a slave of IMAPD_MUPDATE_SERVER, or -a to choose.
CMD ["-m"]
