#!/usr/bin/env bash
# DKMS benchmark against Debian's dkms 3.0.10, both given the same -j and the same Debian amd64 root.
#  1. build: Debian's eight DKMS packages that build for the cached kernel (v4l2loopback, acpi-call,
#     bbswitch, ddcci, digimend, dm-writeboost, evdi, xtrx), added first, then built and timed:
#     dkms one package after another, each with -jJOBS; xdkms in one run whose builds share one
#     jobserver of JOBS tokens (never more than JOBS jobs at once). Rounds alternate between the
#     tools; medians compared.
#     Bound (issue "The DKMS module lifecycle"): xdkms <= 0.8 of dkms.
#  2. status: a tree of 50 modules built for 3 kernels (one installed); `xdkms status` median
#     under 50 ms, with dkms's time on the same tree printed for the ratio.
# dkms runs in a private mount namespace where the root's trees sit at /usr/src, /lib/modules
# and /var/lib/dkms (as in the test suite); the build host's own trees are never written.
#   bash bench/dkms.sh [ROUNDS] [JOBS]
set -euo pipefail
rounds=${1:-3}
jobs=${2:-2}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
kver=$XDKMS_KVER_AMD64
packages=(v4l2loopback-dkms acpi-call-dkms bbswitch-dkms ddcci-dkms digimend-dkms dm-writeboost-dkms
          evdi-dkms xtrx-dkms)

# in_sandbox ROOT CMD...: runs CMD where ROOT's trees are the host's.
in_sandbox() {
  local root=$1; shift
  unshare -m --propagation private bash tests/fixtures/dkms-reference.sh "$root" "$root.overlay" "$@"
}

# new_root DIR: a scratch copy of the Debian amd64 root (hard links) with a signing key.
new_root() {
  mkdir -p "$1/etc" "$1/var/lib/dkms"
  echo 'ID=debian' > "$1/etc/os-release"
  for part in lib usr boot; do cp -al "$XDKMS_ROOT_AMD64/$part" "$1/$part"; done
  cp "$work/mok.key" "$work/mok.pub" "$1/var/lib/dkms/"
}
openssl req -new -x509 -nodes -days 36500 -subj "/CN=xdkms bench key" -newkey rsa:2048 \
  -keyout "$work/mok.key" -outform DER -out "$work/mok.pub" >/dev/null 2>&1

sources=()
for p in "${packages[@]}"; do sources+=("$(ls -d "$XDKMS_DKMS_PACKAGES/$p/usr/src/"*)"); done
mv_of() { basename "$1" | sed 's/-\([0-9]\)/\/\1/'; }  # usr/src/NAME-VERSION -> NAME/VERSION

# build_round TOOL N: adds the packages to a fresh root, then times building all of them.
build_round() {
  local tool=$1 root="$work/$1-$2" start end src
  new_root "$root"
  for src in "${sources[@]}"; do
    if [ "$tool" = xdkms ]; then "$xdkms" add --root "$root" -q -k "$kver" "$src"
    else in_sandbox "$root" dkms add -q -k "$kver" "$src"; fi
  done
  local names=()
  for src in "${sources[@]}"; do names+=("$(mv_of "$src")"); done
  start=$(date +%s.%N)
  if [ "$tool" = xdkms ]; then
    # One run: the eight builds share one jobserver of -j tokens.
    "$xdkms" build --root "$root" -q -j "$jobs" -k "$kver" "${names[@]}"
  else
    # dkms takes one module per run.
    for name in "${names[@]}"; do in_sandbox "$root" dkms build -q -j "$jobs" -k "$kver" "$name"; done
  fi
  end=$(date +%s.%N)
  echo "$end - $start" | bc >> "$work/build.$tool"
  # Every package must have built.
  local built
  built=$("$xdkms" status --root "$root" | grep -c ': built$' || true)
  [ "$built" = ${#packages[@]} ] || { echo "bench: $tool built $built of ${#packages[@]} packages" >&2; exit 1; }
  rm -rf "$root" "$root.overlay"
}

for n in $(seq "$rounds"); do
  build_round dkms "$n"
  build_round xdkms "$n"
done
dkms_s=$(median < "$work/build.dkms")
xdkms_s=$(median < "$work/build.xdkms")
ratio=$(echo "scale=3; $xdkms_s / $dkms_s" | bc)
printf 'build %d packages, -j%s: dkms 3.0.10 %.2f s, xdkms %.2f s, ratio %s (bound 0.8)\n' \
  ${#packages[@]} "$jobs" "$dkms_s" "$xdkms_s" "$ratio"
fail=0
if [ "$(echo "$ratio > 0.8" | bc)" = 1 ]; then echo "bench: build ratio above 0.8" >&2; fail=1; fi

# status on 50 modules x 3 kernels: a real module copied into every slot, with the records
# xdkms writes when it builds.
status_root="$work/status"
new_root "$status_root"
tree="$status_root/var/lib/dkms"
ko=$(find "$XDKMS_ROOT_AMD64/lib/modules/$kver/kernel/drivers/block" -name 'virtio_blk.ko' | head -n1)
# The other two kernels only need distinct names (status reads the tree, not the kernels).
kernels=("$kver" "${kver%%-*}-9901-xdkms" "${kver%%-*}-9902-xdkms")
for i in $(seq -w 1 50); do
  m=bench_mod$i
  mkdir -p "$status_root/usr/src/$m-1.0"
  printf 'PACKAGE_NAME="%s"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="%s"\nDEST_MODULE_LOCATION[0]="/extra"\n' \
    "$m" "$m" > "$status_root/usr/src/$m-1.0/dkms.conf"
  mkdir -p "$tree/$m/1.0"
  ln -s "/usr/src/$m-1.0" "$tree/$m/1.0/source"
  for k in "${kernels[@]}"; do
    d="$tree/$m/1.0/$k/x86_64"
    mkdir -p "$d/module" "$d/log"
    cp "$ko" "$d/module/$m.ko"
    printf '%s\t/updates/dkms\t/extra\n' "$m" > "$d/.xdkms-modules"
  done
  ln -s "1.0/${kernels[0]}/x86_64" "$tree/$m/kernel-${kernels[0]}-x86_64"
  mkdir -p "$status_root/lib/modules/${kernels[0]}/updates/dkms"
  cp "$ko" "$status_root/lib/modules/${kernels[0]}/updates/dkms/$m.ko"
done
"$xdkms" status --root "$status_root" > "$work/status.out"
[ "$(wc -l < "$work/status.out")" = 150 ] || { echo "bench: status printed $(wc -l < "$work/status.out") lines, not 150" >&2; exit 1; }
for _ in $(seq 11); do
  s=$(date +%s%N); "$xdkms" status --root "$status_root" >/dev/null; e=$(date +%s%N)
  echo $(( (e - s) / 1000 )) >> "$work/status.xdkms"
done
s=$(date +%s%N); in_sandbox "$status_root" dkms status >/dev/null 2>&1; e=$(date +%s%N)
dkms_status_ms=$(( (e - s) / 1000000 ))
xdkms_status_us=$(median < "$work/status.xdkms")
printf 'status 50 modules x 3 kernels: xdkms %.1f ms (bound 50), dkms 3.0.10 %d ms, ratio %.4f\n' \
  "$(echo "$xdkms_status_us / 1000" | bc -l)" "$dkms_status_ms" "$(echo "$xdkms_status_us / 1000 / $dkms_status_ms" | bc -l)"
if [ "$(echo "$xdkms_status_us > 50000" | bc)" = 1 ]; then echo "bench: status above 50 ms" >&2; fail=1; fi
exit $fail
