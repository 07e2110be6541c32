#!/usr/bin/env bash
# The release binary is what image builds copy around: static, stripped, under 5 MiB (4 MiB
# until image roots came: readers and writers of image formats are code the binary must carry).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/x86_64-unknown-linux-gnu/release/xdkms
desc=$(file -b "$bin")
size=$(stat -c %s "$bin")
fail=0
case $desc in *"static"*) ;; *) echo "check-binary: not statically linked: $desc" >&2; fail=1 ;; esac
case $desc in *", stripped"*) ;; *) echo "check-binary: not stripped: $desc" >&2; fail=1 ;; esac
if ldd "$bin" 2>&1 | grep -q '=>'; then echo "check-binary: ldd lists shared libraries" >&2; fail=1; fi
if [ "$size" -ge $((5 * 1024 * 1024)) ]; then echo "check-binary: $size bytes, over 5 MiB" >&2; fail=1; fi
# It must run where no shared library or loader is available at all.
if ! env -i "$bin" depmod --help >/dev/null; then echo "check-binary: does not run" >&2; fail=1; fi
[ "$fail" = 0 ] && echo "check-binary: $bin: $size bytes, $desc"
exit "$fail"
