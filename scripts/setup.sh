#!/usr/bin/env bash
# Idempotent set-up for a fresh machine of this project's kind (Debian 12, root): system packages the tests and
# the demo use for real (qemu, tgt iSCSI target, libnbd tools), then the npm dependencies (which bring Node 24).
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(qemu-utils qemu-block-extra tgt libnbd-bin openssl)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=node_modules/.setup-stamp
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi
# The Kubernetes test bed's binaries (kube-apiserver, etcd, kubectl, helm), built once from pinned Go modules.
scripts/testbed/build-binaries.sh

"$PWD/node_modules/.bin/node" --version | grep -q '^v24\.' || { echo "setup: node_modules/.bin/node is not Node 24" >&2; exit 1; }
