#!/usr/bin/env bash
# Build a local stand-in for the Dockerfile's base image, python:3.11-slim-bookworm, when it
# is missing from buildah's store.
#
# Why: the project's machines reach Debian's package archive but no container registry, so
# the official image cannot be pulled. debootstrap makes a minimal bookworm root file system
# with Debian's Python 3.11 (the same distribution and Python minor version as the official
# image); it is committed once and then found in the store on every later build. It is a
# stand-in for building and smoke-testing the image here, not the base you publish.
#
# Usage: deploy/image/base-image.sh IMAGE     (run as root: debootstrap and buildah need it)
set -euo pipefail

image=${1:?usage: base-image.sh IMAGE}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if buildah inspect --type image "$image" >/dev/null 2>&1; then
    exit 0
fi
for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "base-image: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done

echo "base-image: $image is missing; building it with debootstrap (about a minute, once)" >&2
work=$(mktemp -d /var/tmp/cardq-base.XXXXXX)
ctr=""
cleanup() {
    [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
# The official image has `python` on PATH in /usr/local/bin; the Dockerfile relies on it.
ln -s /usr/bin/python3 "$work/rootfs/usr/local/bin/python"
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*

ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
cp -a "$work/rootfs/." "$mnt/"
buildah umount "$ctr" >/dev/null
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd python3 \
    --label org.opencontainers.image.description="local stand-in for python:3.11-slim-bookworm (debootstrap, Debian's python3)" \
    "$ctr"
buildah commit --quiet "$ctr" "$image" >/dev/null
echo "base-image: built $image" >&2
