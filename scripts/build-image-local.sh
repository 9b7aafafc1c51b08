#!/usr/bin/env bash
# Build the imagewarden image with podman on a machine that cannot pull base images, then check
# that it runs `imagewarden --help` as its non-root user and ships the no-op binary.
#
# Not part of CI (about 7 minutes cold). Where docker.io is reachable, plain
# `podman build -t imagewarden .` is all it takes; this script exists because here it is not:
#
# - the Dockerfile's base (python:3.11-slim-bookworm) cannot be pulled, so a Debian bookworm
#   root file system with python3 and python3-venv is made by mmdebstrap from the machine's own
#   apt sources and imported as localhost/imagewarden-base:bookworm (cached as a tarball);
# - PyPI is reached through a TLS-intercepting proxy that only the machine's CA bundle trusts, so
#   a thin layer on that base adds the bundle and PIP_CERT (the Dockerfile itself is unchanged);
# - podman needs runc (crun refuses hybrid cgroups here), cgroupfs, explicit ulimits and the
#   host network for apt and pip during the build (a private containers.conf, /etc untouched).
#
# Environment: KUBE_TEST_CACHE (default /var/cache/imagewarden-test), IMAGE (default
# localhost/imagewarden:dev).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_ROOT=${KUBE_TEST_CACHE:-/var/cache/imagewarden-test}
WORK_DIR=$CACHE_ROOT/image
BASE_TAR=$WORK_DIR/bookworm-python3.tar
BASE_IMAGE=localhost/imagewarden-base:bookworm
TRUSTED_BASE_IMAGE=localhost/imagewarden-base:bookworm-trust
IMAGE=${IMAGE:-localhost/imagewarden:dev}
EXPECTED_UID=$(sed -n 's/^ARG IMAGEWARDEN_UID=//p' Dockerfile)

log() { printf '[build-image-local %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

mkdir -p "$WORK_DIR"
conf_dir=$(mktemp -d)
trap 'rm -rf "$conf_dir"' EXIT
nofile=$(ulimit -Hn)
cat >"$conf_dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
export CONTAINERS_CONF=$conf_dir/containers.conf

if ! command -v mmdebstrap >/dev/null; then
  log "apt-get install mmdebstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap
fi

if [[ ! -s $BASE_TAR ]]; then
  sources=(/etc/apt/sources.list.d/*.sources)
  [[ -f ${sources[0]} ]] || { log "no deb822 apt sources under /etc/apt/sources.list.d"; exit 1; }
  log "mmdebstrap bookworm + python3 (about 3 min)"
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates --mode=root \
    bookworm "$BASE_TAR.tmp" "${sources[@]}" >"$WORK_DIR/mmdebstrap.log" 2>&1
  mv -f "$BASE_TAR.tmp" "$BASE_TAR"
fi
if ! podman image exists "$BASE_IMAGE"; then
  log "podman import $BASE_IMAGE"
  podman import --change 'CMD ["/bin/bash"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi

trust_dir=$conf_dir/trust
mkdir -p "$trust_dir"
cp /etc/ssl/certs/ca-certificates.crt "$trust_dir/"
cat >"$trust_dir/Containerfile" <<EOF
FROM $BASE_IMAGE
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
EOF
podman build -q -t "$TRUSTED_BASE_IMAGE" "$trust_dir" >/dev/null

log "podman build $IMAGE (about 4 min cold)"
started=$SECONDS
podman build --network=host --build-arg "PYTHON_IMAGE=$TRUSTED_BASE_IMAGE" -t "$IMAGE" . \
  >"$WORK_DIR/build.log" 2>&1 || { tail -n 30 "$WORK_DIR/build.log"; exit 1; }
log "built in $((SECONDS - started)) s: $(podman image inspect "$IMAGE" --format '{{.Size}}') bytes"

user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
[[ $user == "$EXPECTED_UID:$EXPECTED_UID" ]] || { log "image USER is '$user'"; exit 1; }
uid=$(podman run --rm --entrypoint id "$IMAGE" -u)
[[ $uid == "$EXPECTED_UID" ]] || { log "container runs as uid $uid"; exit 1; }
podman run --rm --read-only --cap-drop ALL "$IMAGE" --help | grep -q '^usage: imagewarden'
podman run --rm --entrypoint /usr/local/libexec/imagewarden/noop "$IMAGE"
log "ok: $IMAGE runs 'imagewarden --help' as uid $uid; the no-op exits 0"
