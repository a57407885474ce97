#!/usr/bin/env bash
# Build the container images the tests and compose.yaml use, from Debian packages, without a
# container registry (CI reaches Debian's packages but no registry of images).
#
#   skill-credits-local/postgres:15   postgresql-15; honours POSTGRES_USER/PASSWORD/DB
#   skill-credits-local/redis:7       redis-server as its default command
#   skill-credits-local/python:3.11   python3 (3.11), venv and pip: a base for the Dockerfile;
#                                     it carries this machine's CA bundle, so builds from it reach
#                                     PyPI wherever the machine itself does
#   skill-credits-local/citus:VERSION-pg15
#                                     only with CITUS_SRC=/path/to/citus-VERSION.tar.gz: postgresql-15
#                                     with Citus built from that source (a few minutes), preloaded
#                                     and created in $POSTGRES_DB on the first start, like the
#                                     official citusdata/citus image (compose.yaml's citus profile)
#
# Each is a `debootstrap --variant=minbase` root of the same Debian release, with its packages
# installed by chroot from the mirror this machine's apt uses (scripts/debian-mirror.sh), imported
# with `docker import`, then given its entrypoint and metadata by scripts/images/*.Dockerfile (no
# network needed for that step). An image whose tag exists is reused: `--rebuild` builds anew.
# Needs root, debootstrap and a Docker engine that answers.
set -euo pipefail
cd "$(dirname "$0")"

SUITE=bookworm
PREFIX=skill-credits-local
rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1

declare -A PACKAGES=(
  [postgres]="postgresql-15"
  [redis]="redis-server"
  [python]="python3 python3-venv python3-pip python-is-python3 ca-certificates"
)
declare -A TAGS=([postgres]=15 [redis]=7 [python]=3.11)
names=(postgres redis python)
if [ -n "${CITUS_SRC:-}" ]; then
  [ -f "$CITUS_SRC" ] || { echo "CITUS_SRC=$CITUS_SRC is not a file" >&2; exit 1; }
  CITUS_SRC="$(realpath "$CITUS_SRC")"
  version="$(basename "$CITUS_SRC" | sed -n 's/^citus-\([0-9.]*\)\.tar\.gz$/\1/p')"
  [ -n "$version" ] || { echo "CITUS_SRC must be named citus-VERSION.tar.gz" >&2; exit 1; }
  # what scripts/citus-cluster.sh builds Citus with
  PACKAGES[citus]="postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev liblz4-dev
    libzstd-dev libkrb5-dev libssl-dev libselinux1-dev libxslt1-dev libpam0g-dev
    libreadline-dev flex bison autoconf make gcc"
  TAGS[citus]="$version-pg15"
  names+=(citus)
fi

missing=()
for name in "${names[@]}"; do
  tag="$PREFIX/$name:${TAGS[$name]}"
  if [ $rebuild = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "reusing $tag"
  else
    missing+=("$name")
  fi
done
[ ${#missing[@]} -gt 0 ] || exit 0

command -v debootstrap >/dev/null || { echo "debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
mirror="$(./debian-mirror.sh "$SUITE")"
work="$(mktemp -d /var/tmp/skill-credits-images.XXXXXX)"
trap 'rm -rf --one-file-system "$work"' EXIT

echo "debootstrap $SUITE (minbase) from the machine's Debian mirror"
debootstrap --variant=minbase "$SUITE" "$work/base" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# No service starts inside the chroot; no cluster is made at install time (the entrypoint makes one).
printf '#!/bin/sh\nexit 101\n' >"$work/base/usr/sbin/policy-rc.d"
chmod +x "$work/base/usr/sbin/policy-rc.d"
mkdir -p "$work/base/etc/postgresql-common"
echo "create_main_cluster = false" >"$work/base/etc/postgresql-common/createcluster.conf"

for name in "${missing[@]}"; do
  tag="$PREFIX/$name:${TAGS[$name]}"
  root="$work/$name"
  echo "building $tag (${PACKAGES[$name]})"
  docker image rm "$tag" >/dev/null 2>&1 || true  # --rebuild: leave no untagged copy behind
  cp -a "$work/base" "$root"
  chroot "$root" apt-get install -y -qq --no-install-recommends ${PACKAGES[$name]} \
    >"$work/$name.log" 2>&1 || { tail -20 "$work/$name.log" >&2; exit 1; }
  if [ "$name" = citus ]; then
    mkdir -p "$root/tmp/citus"
    tar -xzf "$CITUS_SRC" -C "$root/tmp/citus"  # the tree at its top, or in one folder
    src="$(find "$root/tmp/citus" -maxdepth 2 -name configure -printf '%h\n' | head -n 1)"
    [ -n "$src" ] || { echo "$CITUS_SRC holds no configure script" >&2; exit 1; }
    chroot "$root" sh -c "cd '${src#"$root"}' && ./configure && make -j\"\$(nproc)\" && make install" \
      >"$work/citus.build.log" 2>&1 || { tail -30 "$work/citus.build.log" >&2; exit 1; }
    rm -rf "$root/tmp/citus"
  fi
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root/usr/sbin/policy-rc.d"
  if [ "$name" = python ]; then
    # Like the official python image: pip may install into the image's own Python.
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    # Builds FROM this image download from PyPI: they trust what this machine trusts (its CA
    # bundle holds any certificate authority of a TLS-inspecting proxy it goes through).
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  tar -C "$root" -c . | docker import - "$PREFIX/$name-rootfs:${TAGS[$name]}" >/dev/null
  rm -rf --one-file-system "$root"
  # the classic builder (the client may lack buildx); these steps only COPY and set metadata
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" --build-arg "ROOTFS=$PREFIX/$name-rootfs:${TAGS[$name]}" \
    -f "images/$name.Dockerfile" images >"$work/$name.build.log" 2>&1 \
    || { cat "$work/$name.build.log" >&2; exit 1; }
  docker image rm "$PREFIX/$name-rootfs:${TAGS[$name]}" >/dev/null
done
docker image ls "$PREFIX/*"
