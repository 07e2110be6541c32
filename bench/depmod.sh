#!/usr/bin/env bash
# depmod benchmark: xdkms against Debian's kmod 30 on the Debian amd64 tree, plain and .ko.xz.
# Runs alternate between the two tools (after one warm-up each), 7 rounds, medians compared.
# Bounds (issue "Foundation and a native depmod"): wall time <= 0.5 of kmod's on the plain tree,
# <= 0.6 on the xz tree, peak RSS <= 1.5 x kmod's. Exits 1 when a bound is missed.
#   bash bench/depmod.sh [ROUNDS]
set -euo pipefail
rounds=${1:-7}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

# tree NAME ROOT: a hard-linked copy of ROOT's module directory for each tool.
tree() {
  for tool in kmod xdkms; do
    mkdir -p "$work/$1-$tool/lib/modules"
    cp -al "$2/lib/modules/$XDKMS_KVER_AMD64" "$work/$1-$tool/lib/modules/"
    rm -f "$work/$1-$tool/lib/modules/$XDKMS_KVER_AMD64/"{build,source}
  done
}

# measure OUT CMD...: appends "seconds maxrss_kb" to OUT.
measure() {
  local out=$1; shift
  /usr/bin/time -f '%e %M' -o "$out.one" "$@" >/dev/null 2>&1
  cat "$out.one" >> "$out"
}


fail=0
# bench NAME ROOT TIME_BOUND
bench() {
  local name=$1 root=$2 bound=$3
  tree "$name" "$root"
  depmod -b "$work/$name-kmod" "$XDKMS_KVER_AMD64" 2>/dev/null
  "$xdkms" depmod -b "$work/$name-xdkms" "$XDKMS_KVER_AMD64" 2>/dev/null
  for _ in $(seq "$rounds"); do
    measure "$work/$name.kmod" depmod -b "$work/$name-kmod" "$XDKMS_KVER_AMD64"
    measure "$work/$name.xdkms" "$xdkms" depmod -b "$work/$name-xdkms" "$XDKMS_KVER_AMD64"
  done
  for f in "$work/$name-kmod/lib/modules/$XDKMS_KVER_AMD64"/modules.*; do
    cmp -s "$f" "$work/$name-xdkms/lib/modules/$XDKMS_KVER_AMD64/$(basename "$f")" \
      || { echo "bench: $name: $(basename "$f") differs from kmod's" >&2; exit 1; }
  done
  local kt xt km xm
  kt=$(cut -d' ' -f1 "$work/$name.kmod" | median); xt=$(cut -d' ' -f1 "$work/$name.xdkms" | median)
  km=$(cut -d' ' -f2 "$work/$name.kmod" | median); xm=$(cut -d' ' -f2 "$work/$name.xdkms" | median)
  awk -v n="$name" -v kt="$kt" -v xt="$xt" -v km="$km" -v xm="$xm" -v b="$bound" -v r="$rounds" 'BEGIN {
    t = xt / kt; m = xm / km
    printf "%-6s kmod %.3f s %6.1f MiB | xdkms %.3f s %6.1f MiB | time ratio %.2f (bound %.2f) memory ratio %.2f (bound 1.50) | median of %d\n",
      n, kt, km / 1024, xt, xm / 1024, t, b, m, r
    exit (t <= b && m <= 1.5) ? 0 : 1 }' || fail=1
}

echo "depmod benchmark: Debian $XDKMS_KVER_AMD64 ($(find "$XDKMS_ROOT_AMD64/lib/modules/$XDKMS_KVER_AMD64" -name '*.ko' | wc -l) modules), $(nproc) CPUs"
bench plain "$XDKMS_ROOT_AMD64" 0.5
bench xz "$XDKMS_ROOT_AMD64_XZ" 0.6
if [ "$fail" = 1 ]; then echo "bench: a bound was missed" >&2; exit 1; fi
echo "bench: all bounds met"
