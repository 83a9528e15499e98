#!/usr/bin/env bash
# make k8s-check: deploy/k8s/base matches the services' access rules (`sterling access`),
# `kustomize build` succeeds for every overlay, and every object it makes decodes strictly
# into the official Kubernetes API types (deploy/k8s/check).
#
# Tools come from the Go module proxy into the cache: kustomize v5.8.1 and the checker.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="$HOME/.cache/sterling/tools/go"
export GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod
mkdir -p "$GOBIN"
log() { echo "k8s-check: $*" >&2; }

if [ ! -x "$GOBIN/kustomize" ]; then
  log "installing kustomize v5.8.1 from the Go module proxy"
  go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.1
fi
(cd deploy/k8s/check && go build -o "$GOBIN/sterling-k8s-check" .)

"${CARGO:-cargo}" run -q -p sterling -- access | deploy/k8s/generate.py --check
log "base/ matches the services' access rules"
for overlay in deploy/k8s/overlays/*/; do
  name="$(basename "$overlay")"
  "$GOBIN/kustomize" build "$overlay" > "/tmp/sterling-k8s-$name.yaml"
  printf 'k8s-check: %s: ' "$name" >&2
  "$GOBIN/sterling-k8s-check" "/tmp/sterling-k8s-$name.yaml" >&2
done
