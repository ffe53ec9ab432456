# The coordinator image: `hybridize serve` and the API clients from the coordinator-only build
# (-DHYB_TORCH=OFF). The full binary would work too, but it pulls LibTorch (about 1 GB of shared
# libraries the coordinator never calls) into an image that only serves HTTP and SQLite; this one
# holds one binary of a few MB on debian:bookworm-slim.
#
#   docker build -f docker/coordinator.Dockerfile -t hybridize-coordinator:0.1.0 .
#   (no registry? docker/build-images makes the Debian base with debootstrap)
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
COPY . /src
WORKDIR /src
# The project's own scripts, so that CI (scripts/test runs scripts/build-coordinator) keeps this
# build step honest.
RUN scripts/setup --coordinator \
 && scripts/build-coordinator /tmp/build --install /opt/hybridize

FROM ${BASE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      libsqlite3-0 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/hybridize/bin/hybridize /usr/local/bin/hybridize
# Non-root, with the uid/gid the manifests' securityContext uses; the storage root and the
# database directory exist and belong to it when no volume is mounted there.
RUN groupadd --gid 10001 hybridize \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin hybridize \
 && mkdir -p /data/hybridize /var/lib/hybridize/db \
 && chown 10001:10001 /data/hybridize /var/lib/hybridize/db
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["hybridize"]
CMD ["serve", "--storage", "/data/hybridize", "--db", "/var/lib/hybridize/db/hybridize.db", \
     "--listen", "0.0.0.0:8080"]
