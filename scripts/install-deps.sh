#!/usr/bin/env bash
# Install everything the test suite needs on a bare Debian 12 machine (run as root).
# Idempotent: a warm machine skips what it already has, so CI stays fast.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # registries and image tools (tests/support/registry.py)
  docker-registry skopeo
  # container engines that pull for real (containerd for simulated kubelets, podman for the Docker API)
  containerd podman uidmap slirp4netns fuse-overlayfs
  # static no-op / shell binary for images built by the tests
  busybox-static
  # Kubernetes test cluster built from Debian's source (scripts/build-kubernetes.sh)
  etcd-server etcd-client golang-1.19-go golang-1.19-src rsync golang-github-modern-go-reflect2-dev dpkg-dev
  # docker/noop.c, the static pre-pull no-op binary (tests/test_prepull_noop.py builds it)
  gcc libc6-dev
  # headless browser for the spawn-form test (tests/test_browser.py, driven over DevTools)
  chromium
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test,dev]'
