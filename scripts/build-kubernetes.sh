#!/usr/bin/env bash
# Build (or reuse) kube-apiserver, kube-controller-manager and kube-scheduler 1.20.2 for the test
# cluster in tests/support/kube.py, from Debian's own source package and Go 1.19, fully offline.
#
# Why this way: no Debian/PyPI/npm package ships these binaries, but Debian ships the source
# (kubernetes 1.20.5+really1.20.2) and the toolchain. See /work/shared/notes/kubernetes-apiserver.md.
#
# - deb-src is derived from the machine's own apt sources (a private copy with
#   `Types: deb deb-src`, used through apt's -o Dir::Etc::* options); no mirror address is written
#   and the system's apt state is left untouched (private lists and caches).
# - vendored github.com/modern-go/reflect2 v1.0.1 is replaced with Debian's 1.0.2: v1.0.1 crashes
#   (aeshashbody / mapiterinit faults) when built with Go >= 1.18.
# - binaries are installed to $KUBE_TEST_CACHE/kubernetes-1.20.2/bin and verified by `--version`;
#   when all three verify, the script exits at once (fast no-op for CI).
#
# Options: --with-kubectl also builds kubectl (for debugging by hand; tests never need it).
# Environment: KUBE_TEST_CACHE (default /var/cache/imagewarden-test), KUBE_BUILD_FORCE=1 to rebuild.
set -euo pipefail

KUBE_VERSION=1.20.2
CACHE_ROOT=${KUBE_TEST_CACHE:-/var/cache/imagewarden-test}
INSTALL_DIR=$CACHE_ROOT/kubernetes-$KUBE_VERSION
BIN_DIR=$INSTALL_DIR/bin
WORK_DIR=$CACHE_ROOT/kubernetes-build
APT_DIR=$WORK_DIR/apt
SOURCE_DIR=$WORK_DIR/src/kubernetes-$KUBE_VERSION
LOG_FILE=$WORK_DIR/build.log
GO_BIN=/usr/lib/go-1.19/bin
REFLECT2_DEBIAN=/usr/share/gocode/src/github.com/modern-go/reflect2
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler)
for arg in "$@"; do
  case $arg in
    --with-kubectl) COMMANDS+=(kubectl) ;;
    *) echo "usage: $0 [--with-kubectl]" >&2; exit 2 ;;
  esac
done

log() { printf '[build-kubernetes %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

binary_ok() {
  local binary=$1
  [[ -x $binary ]] || return 1
  if [[ $(basename "$binary") == kubectl ]]; then
    "$binary" version --client --short 2>/dev/null | grep -qx "Client Version: v$KUBE_VERSION"
  else
    "$binary" --version 2>/dev/null | grep -qx "Kubernetes v$KUBE_VERSION"
  fi
}

all_cached() {
  local cmd
  for cmd in "${COMMANDS[@]}"; do
    binary_ok "$BIN_DIR/$cmd" || return 1
  done
}

fetch_source() {
  if [[ -f $SOURCE_DIR/.imagewarden-extracted ]]; then
    log "source tree present: $SOURCE_DIR"
    return
  fi
  log "enabling deb-src in a private apt configuration"
  rm -rf "$APT_DIR"
  mkdir -p "$APT_DIR/sources.list.d" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  local found=0 source_file
  for source_file in /etc/apt/sources.list.d/*.sources; do
    [[ -f $source_file ]] || continue
    sed -E 's/^Types:.*/Types: deb deb-src/' "$source_file" \
      >"$APT_DIR/sources.list.d/$(basename "$source_file")"
    found=1
  done
  if [[ -f /etc/apt/sources.list ]] && grep -qE '^deb ' /etc/apt/sources.list; then
    { grep -E '^deb ' /etc/apt/sources.list; grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /'; } \
      >"$APT_DIR/sources.list"
    found=1
  else
    : >"$APT_DIR/sources.list"
  fi
  ((found)) || { log "no apt sources found under /etc/apt"; exit 1; }
  local apt_options=(
    -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
    -o "Dir::Etc::SourceParts=$APT_DIR/sources.list.d"
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache=$APT_DIR/cache"
  )
  log "apt-get update (private lists)"
  apt-get "${apt_options[@]}" update -qq >>"$LOG_FILE" 2>&1
  log "apt-get source kubernetes"
  rm -rf "$WORK_DIR/download" "$WORK_DIR/src"
  mkdir -p "$WORK_DIR/download" "$WORK_DIR/src"
  (cd "$WORK_DIR/download" && apt-get "${apt_options[@]}" source --download-only kubernetes) >>"$LOG_FILE" 2>&1
  local dsc
  dsc=$(ls "$WORK_DIR"/download/kubernetes_*.dsc)
  log "extracting $(basename "$dsc")"
  dpkg-source --no-check -x "$dsc" "$SOURCE_DIR" >>"$LOG_FILE" 2>&1
  [[ -f $SOURCE_DIR/Makefile && -d $SOURCE_DIR/vendor ]] || { log "unexpected source layout in $SOURCE_DIR"; exit 1; }
  touch "$SOURCE_DIR/.imagewarden-extracted"
}

replace_reflect2() {
  local vendored=$SOURCE_DIR/vendor/github.com/modern-go/reflect2
  [[ -d $vendored ]] || { log "no vendored reflect2 at $vendored"; exit 1; }
  log "replacing vendored reflect2 with Debian's copy"
  rm -f "$vendored"/*.go "$vendored"/*.s
  cp "$REFLECT2_DEBIAN"/*.go "$REFLECT2_DEBIAN"/*.s "$vendored"/
}

build() {
  export PATH=$GO_BIN:$PATH
  export GOPROXY=off CGO_ENABLED=0
  # hack/lib/golang.sh pins GOCACHE to _output/local/go/cache inside the kept source tree
  # (under $WORK_DIR), so a rebuild there is warm (~4 min instead of ~15).
  export KUBE_GIT_VERSION=v$KUBE_VERSION KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean
  local what=""
  local cmd
  for cmd in "${TO_BUILD[@]}"; do what+="cmd/$cmd "; done
  log "make WHAT=\"${what% }\" with $(go version | cut -d' ' -f3) (about 20 min cold on 2 cores, ~4 min warm)"
  local started=$SECONDS
  (cd "$SOURCE_DIR" && make WHAT="${what% }" GOFLAGS=-p=2 GOLDFLAGS="-s -w") >>"$LOG_FILE" 2>&1 &
  local make_pid=$!
  while kill -0 "$make_pid" 2>/dev/null; do
    sleep 30
    kill -0 "$make_pid" 2>/dev/null && log "still building ($((SECONDS - started)) s): $(tail -n 1 "$LOG_FILE" | cut -c1-120)"
  done
  if ! wait "$make_pid"; then
    log "make failed after $((SECONDS - started)) s; last lines of $LOG_FILE:"
    tail -n 30 "$LOG_FILE"
    exit 1
  fi
  log "make finished in $((SECONDS - started)) s"
}

install_binaries() {
  local out_dir=$SOURCE_DIR/_output/local/bin/linux/amd64
  for cmd in "${TO_BUILD[@]}"; do
    binary_ok "$out_dir/$cmd" || { log "built $cmd does not report v$KUBE_VERSION"; exit 1; }
    cp "$out_dir/$cmd" "$BIN_DIR/.$cmd.tmp"
    mv -f "$BIN_DIR/.$cmd.tmp" "$BIN_DIR/$cmd"
  done
  all_cached || { log "installed binaries failed verification"; exit 1; }
  log "installed ${TO_BUILD[*]} to $BIN_DIR"
}


main() {
  if [[ ${KUBE_BUILD_FORCE:-0} != 1 ]] && all_cached; then
    log "cached binaries verified (v$KUBE_VERSION) in $BIN_DIR"
    exit 0
  fi

  mkdir -p "$WORK_DIR" "$BIN_DIR"
  # One build at a time on this machine: a second caller waits, then finds the cache valid.
  exec 9>"$WORK_DIR/.lock"
  if ! flock -n 9; then
    log "another build holds $WORK_DIR/.lock; waiting for it"
    flock 9
    if [[ ${KUBE_BUILD_FORCE:-0} != 1 ]] && all_cached; then
      log "cached binaries verified after waiting"
      exit 0
    fi
  fi

  for tool in "$GO_BIN/go" /usr/bin/rsync /usr/bin/dpkg-source /usr/bin/etcd; do
    [[ -x $tool ]] || { log "missing $tool: run scripts/install-deps.sh first"; exit 1; }
  done
  [[ -f $REFLECT2_DEBIAN/reflect2.go ]] || {
    log "missing $REFLECT2_DEBIAN: install golang-github-modern-go-reflect2-dev"
    exit 1
  }

  # Build only what is missing or wrong (all of it when forced).
  TO_BUILD=()
  for cmd in "${COMMANDS[@]}"; do
    if [[ ${KUBE_BUILD_FORCE:-0} == 1 ]] || ! binary_ok "$BIN_DIR/$cmd"; then TO_BUILD+=("$cmd"); fi
  done

  log "building Kubernetes v$KUBE_VERSION: ${TO_BUILD[*]} (log: $LOG_FILE)"
  : >"$LOG_FILE"

  total_started=$SECONDS
  fetch_source
  replace_reflect2
  build
  install_binaries
  log "done in $((SECONDS - total_started)) s"
}

# One line, so bash has read the whole file before the build starts (safe to edit meanwhile).
main "$@"; exit
