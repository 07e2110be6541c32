#!/usr/bin/env bash
# Build plan benchmark (issue 13, acceptance 2): the cross matrix's six jobs (three Debian DKMS
# packages for the amd64 and the arm64 kernel, one sysroot holding both), planned with a build
# cache and run by `make -j2` from the plan's Makefile, twice:
#   first:  a fresh root and an empty cache: every job builds;
#   second: another fresh root, the same cache: every job is restored from it.
# Each time covers the plan, the six build jobs, the two install jobs and their indexes.
# Bound: second <= 0.05 of first (one round each: the first run takes about a minute).
#   bash bench/plan.sh
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bound=0.05
matrix_sources
cache=$work/cache

# run N: plans and runs the matrix in a fresh root $work/root-N; its wall time in $work/time-N.
run() {
  local root=$work/root-$1 start end installed
  matrix_root "$root"
  start=$(date +%s.%N)
  "$xdkms" plan --root "$root" --cache "$cache" -k "${kernels[0]}" -k "${kernels[1]}" --format make > "$work/plan-$1.mk"
  make -s -j2 -f "$work/plan-$1.mk" -C "$work" XDKMS_PLAN_STAMPS="stamps-$1" > "$work/make-$1.log"
  end=$(date +%s.%N)
  echo "$end - $start" | bc > "$work/time-$1"
  installed=$("$xdkms" status --root "$root" | grep -c ': installed$' || true)
  [ "$installed" = 6 ] || { echo "bench: $installed of 6 installed in $root" >&2; exit 1; }
}

run 1
run 2
restored=$(grep -c 'Restored from the build cache' "$work/make-2.log" || true)
[ "$restored" = 6 ] || { echo "bench: the second run restored $restored of 6 builds" >&2; exit 1; }
first=$(cat "$work/time-1")
second=$(cat "$work/time-2")
ratio=$(echo "scale=3; $second / $first" | bc)
printf 'build plan, 6 jobs by make -j2: first run %.2f s, second run (every job from the cache) %.2f s, ratio %s (bound %s)\n' \
  "$first" "$second" "$ratio" "$bound"
if [ "$(echo "$ratio > $bound" | bc)" = 1 ]; then echo "bench: cached plan run ratio above $bound" >&2; exit 1; fi
