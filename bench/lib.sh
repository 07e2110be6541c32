# Shared by the benchmark scripts: the test cache, a release build, a scratch directory, medians.
# shellcheck shell=bash
cd "$(dirname "${BASH_SOURCE[1]}")/.."
cache=${XDKMS_TEST_CACHE:-/var/cache/xdkms-test}
# shellcheck source=/dev/null
. "$cache/env.sh"
cargo build --release --quiet
xdkms=$PWD/target/x86_64-unknown-linux-gnu/release/xdkms
work=$(mktemp -d "${TMPDIR:-/tmp}/xdkms-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# matrix_sources: `sources` (the source trees), `names` (NAME/VERSION) and `kernels` of the
# cross matrix: three of Debian's DKMS packages (v4l2loopback, ddcci, dm-writeboost: one, two
# and several source files) for the amd64 kernel (native) and the arm64 one (cross).
matrix_sources() {
  local p src
  sources=()
  names=()
  kernels=("$XDKMS_KVER_AMD64" "$XDKMS_KVER_ARM64")
  for p in v4l2loopback-dkms ddcci-dkms dm-writeboost-dkms; do
    src=$(ls -d "$XDKMS_DKMS_PACKAGES/$p/usr/src/"*)
    sources+=("$src")
    names+=("$(basename "$src" | sed 's/-\([0-9]\)/\/\1/')")  # NAME-VERSION -> NAME/VERSION
  done
}

# matrix_root DIR: the amd64 sysroot plus the arm64 kernel's modules and headers (hard links;
# the -common headers and the kbuild tools are the same packages in both), `sources` added.
matrix_root() {
  mkdir -p "$1/etc" "$1/var/lib/dkms"
  echo 'ID=debian' > "$1/etc/os-release"
  for part in lib usr boot; do cp -al "$XDKMS_ROOT_AMD64/$part" "$1/$part"; done
  cp -al "$XDKMS_ROOT_ARM64/lib/modules/$XDKMS_KVER_ARM64" "$1/lib/modules/"
  cp -al "$XDKMS_ROOT_ARM64/usr/src/linux-headers-$XDKMS_KVER_ARM64" "$1/usr/src/"
  local src
  for src in "${sources[@]}"; do "$xdkms" add --root "$1" -q "$src"; done
}
