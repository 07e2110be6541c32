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
