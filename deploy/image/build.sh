#!/usr/bin/env bash
# `make image`: build the Dockerfile with buildah, no Docker engine or registry needed.
#
# Environment: IMAGE (the tag to build, default localhost/cardq:dev); BASE_IMAGE (the
# Dockerfile's base; the default is a local stand-in built by base-image.sh when missing,
# set it to python:3.11-slim-bookworm where a registry is reachable).
#
# pip inside the build must trust the same certificate authorities as this machine (its
# package index may sit behind a proxy with its own CA): the host's CA bundle and a pip.conf
# naming it are mounted read-only into the build steps, never copied into a layer.
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${IMAGE:-localhost/cardq:dev}
base=${BASE_IMAGE:-localhost/cardq-base:python3.11-bookworm}
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}

command -v buildah >/dev/null || { echo "image: buildah is not installed (apt-get install buildah)" >&2; exit 1; }
pull=missing
if [[ $base == localhost/cardq-base:* ]]; then
    deploy/image/base-image.sh "$base"
    pull=never
fi

conf=$(mktemp -d)
trap 'rm -rf "$conf"' EXIT
mounts=()
{
    echo "[global]"
    if [ -r "$ca_bundle" ]; then
        echo "cert = /etc/ssl/certs/ca-certificates.crt"
        mounts+=(-v "$(realpath "$ca_bundle"):/etc/ssl/certs/ca-certificates.crt:ro")
    fi
    [ -n "${PIP_INDEX_URL:-}" ] && echo "index-url = $PIP_INDEX_URL"
    true
} >"$conf/pip.conf"
mounts+=(-v "$conf/pip.conf:/etc/pip.conf:ro")

buildah bud --isolation chroot --pull="$pull" --network host --layers \
    "${mounts[@]}" \
    --build-arg "BASE_IMAGE=$base" \
    --tag "$image" \
    --file Dockerfile .
echo "image: built $image"
