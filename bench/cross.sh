#!/usr/bin/env bash
# Cross build matrix benchmark: three of Debian's DKMS packages (v4l2loopback, ddcci,
# dm-writeboost: one, two and several source files) for two kernels, the amd64 one (native) and
# the arm64 one (cross, aarch64-linux-gnu-), in one sysroot holding both.
#   serial: the six (package, kernel) builds one after another, each `xdkms build -j JOBS` for
#           one pair (its make gets -j JOBS, as a recipe building them in turn would);
#   matrix: one `xdkms build -j JOBS -k AMD64 -k ARM64` of the three packages, whose six builds
#           share one jobserver of JOBS tokens (never more than JOBS jobs at once).
# Rounds alternate; medians compared. Bound (issue "Cross builds into a sysroot"): matrix <= 0.75
# of serial.
#   bash bench/cross.sh [ROUNDS] [JOBS]
set -euo pipefail
rounds=${1:-3}
jobs=${2:-2}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
matrix_sources

# check_built ROOT: all six pairs built.
check_built() {
  local built
  built=$("$xdkms" status --root "$1" | grep -c ': built$' || true)
  [ "$built" = 6 ] || { echo "bench: $built of 6 builds done in $1" >&2; "$xdkms" status --root "$1" >&2; exit 1; }
}

round() {
  local mode=$1 root="$work/$1-$2" start end name k
  matrix_root "$root"
  start=$(date +%s.%N)
  if [ "$mode" = matrix ]; then
    "$xdkms" build --root "$root" -q -j "$jobs" -k "${kernels[0]}" -k "${kernels[1]}" "${names[@]}"
  else
    for name in "${names[@]}"; do
      for k in "${kernels[@]}"; do "$xdkms" build --root "$root" -q -j "$jobs" -k "$k" "$name"; done
    done
  fi
  end=$(date +%s.%N)
  echo "$end - $start" | bc >> "$work/$mode"
  check_built "$root"
  rm -rf "$root"
}

for n in $(seq "$rounds"); do
  round serial "$n"
  round matrix "$n"
done
serial_s=$(median < "$work/serial")
matrix_s=$(median < "$work/matrix")
ratio=$(echo "scale=3; $matrix_s / $serial_s" | bc)
printf 'cross matrix, 3 packages x (amd64, arm64), -j%s: serial %.2f s, one run %.2f s, ratio %s (bound 0.75)\n' \
  "$jobs" "$serial_s" "$matrix_s" "$ratio"
if [ "$(echo "$ratio > 0.75" | bc)" = 1 ]; then echo "bench: cross matrix ratio above 0.75" >&2; exit 1; fi
