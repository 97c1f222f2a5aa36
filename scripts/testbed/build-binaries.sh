#!/usr/bin/env bash
# Builds the test bed's upstream binaries (kube-apiserver, kubectl, etcd, helm) from their Go modules at the
# versions pinned in scripts/testbed/*/go.mod, through the Go module proxy (no binary downloads exist here).
# Output: ${SENDENSE_CACHE:-$HOME/.cache/sendense-nutanix}/bin/<name>-<version>; a binary already there is
# not rebuilt, and the Go module and build caches live in the same cache dir, so a second run is instant.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${SENDENSE_CACHE:-$HOME/.cache/sendense-nutanix}"
bin="$cache/bin"
mkdir -p "$bin"

if ! command -v go >/dev/null; then
  echo "build-binaries: the Go toolchain is missing; install Go >= 1.26 (e.g. apt-get install golang-go from backports) and rerun $0" >&2
  exit 1
fi

export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOFLAGS="-trimpath -mod=readonly" CGO_ENABLED=0
# Several test workers may call this at once: one builds, the others wait and then find the binaries.
exec 9>"$cache/build.lock"
flock 9

pinned_version() { # <wrapper dir> <module path>
  (cd "$here/$1" && go list -m -f '{{.Version}}' "$2")
}

k8s_version="$(pinned_version kubernetes k8s.io/kubernetes)"
etcd_version="$(pinned_version etcd go.etcd.io/etcd/server/v3)"
helm_version="$(pinned_version helm helm.sh/helm/v3)"

# build <wrapper dir> <binary name> <version> <package> [extra -ldflags]
build() {
  local dir="$1" name="$2" version="$3" pkg="$4" extra_ldflags="${5:-}"
  local out="$bin/$name-$version"
  if [[ -x "$out" ]]; then
    echo "build-binaries: $name $version already built ($out)"
    return
  fi
  echo "build-binaries: building $name $version from $pkg ..."
  local started=$SECONDS
  (cd "$here/$dir" && go build -ldflags="-s -w $extra_ldflags" -o "$out.partial" "$pkg")
  mv "$out.partial" "$out" # rename last, so an interrupted build never leaves a binary that looks complete
  echo "build-binaries: built $name $version in $((SECONDS - started))s"
}

# Without these stamps the binaries report v0.0.0-master, which kubectl and client libraries warn about.
minor="${k8s_version#v1.}"
minor="${minor%%.*}"
k8s_stamp="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
k8s_stamp="$k8s_stamp -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

total_started=$SECONDS
build kubernetes kube-apiserver "$k8s_version" k8s.io/kubernetes/cmd/kube-apiserver "$k8s_stamp"
build kubernetes kubectl "$k8s_version" k8s.io/kubernetes/cmd/kubectl "$k8s_stamp"
build etcd etcd "$etcd_version" go.etcd.io/etcd/server/v3
build helm helm "$helm_version" helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$helm_version"
echo "build-binaries: all binaries ready in $bin ($((SECONDS - total_started))s)"
