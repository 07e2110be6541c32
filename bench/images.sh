#!/usr/bin/env bash
# Image editing benchmark (issue 12, acceptance 5): a root holding Debian's amd64 kernel with
# its whole module tree, its headers, and a DKMS module already built in its dkms tree, as a
# 1 GiB ext4 image; the same plus Debian's arm64 sysroot (`arm64/`) and the zstd-compressed amd64
# module tree (`srv/amd64-zst`) as an xz squashfs of at least 256 MiB (issue 12 asks for 256;
# ~275 here; the script fails if it is smaller). Timed:
#   ext4, in alternating rounds (medians compared):
#     install: `xdkms install --root IMAGE` of that module: the image's parts extracted, the
#              module installed, the kernel's indexes regenerated, the change committed in
#              place through the filesystem's journal;
#     mke2fs:  `mke2fs -d` making the same 1 GiB image from the extracted tree.
#   squashfs, one round each (mksquashfs takes ~130 s here; ~0.73 measured):
#     install:    the same install on the squashfs (a new image written, the old files' data
#                 copied as stored, the fragment blocks packed and compressed again), with its
#                 peak memory printed;
#     mksquashfs: `mksquashfs -comp xz` of the extracted tree (every core).
# The ext4 target, install <= 0.10 of mke2fs, is enforced (~0.075 measured: the kernel's own
# module files stay in the image, where depmod reads them, and the headers are extracted only
# for a build; copying the modules out again would take it to ~0.15, the headers too ~0.3).
# The squashfs target, 1.2 of mksquashfs, is enforced.
#   bash bench/images.sh [ROUNDS]
set -euo pipefail
rounds=${1:-3}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
k=$XDKMS_KVER_AMD64
bound=0.10
squashfs_bound=1.2

tree=$work/tree
mkdir -p "$tree/etc" "$tree/var/lib/dkms"
echo 'ID=debian' > "$tree/etc/os-release"
for part in lib usr boot; do cp -al "$XDKMS_ROOT_AMD64/$part" "$tree/$part"; done
"$xdkms" build --root "$tree" -q -k "$k" tests/fixtures/dkms/xdkms_test-1.0
base=$work/base.ext4
mke2fs -q -F -t ext4 -d "$tree" "$base" 1G > /dev/null

# seconds COMMAND...: its wall time (its own output discarded: mke2fs announces new files).
seconds() { local start end; start=$(date +%s.%N); "$@" > /dev/null; end=$(date +%s.%N); echo "$end - $start" | bc; }
for _ in $(seq "$rounds"); do
  rm -f "$work/made.ext4"
  seconds mke2fs -q -F -t ext4 -d "$tree" "$work/made.ext4" 1G >> "$work/mke2fs"
  cp --sparse=always "$base" "$work/image.ext4"
  # The copy's writeback is the harness's, not the edit's (whose fsyncs would otherwise wait
  # for it): an image to customize has long been written.
  sync "$work/image.ext4"
  seconds "$xdkms" install --root "$work/image.ext4" -q -k "$k" xdkms_test/1.0 >> "$work/install"
  "$xdkms" status --root "$work/image.ext4" | grep -q ': installed$' || {
    echo "bench: the module is not installed in the image" >&2
    exit 1
  }
done
mke2fs_s=$(median < "$work/mke2fs")
install_s=$(median < "$work/install")
ratio=$(echo "scale=3; $install_s / $mke2fs_s" | bc)
printf 'ext4 1 GiB image, one module: mke2fs -d %.2f s, xdkms install --root IMAGE %.2f s, ratio %s (bound %s)\n' \
  "$mke2fs_s" "$install_s" "$ratio" "$bound"
if [ "$(echo "$ratio > $bound" | bc)" = 1 ]; then echo "bench: image install ratio above $bound" >&2; exit 1; fi

# The squashfs half: the tree as an xz squashfs, made once by mksquashfs (timed), edited once.
squashfs_tree=$work/squashfs-tree
cp -al "$tree" "$squashfs_tree"
cp -al "$XDKMS_ROOT_ARM64" "$squashfs_tree/arm64"
mkdir -p "$squashfs_tree/srv"
cp -al "$XDKMS_ROOT_AMD64_ZST" "$squashfs_tree/srv/amd64-zst"
seconds mksquashfs "$squashfs_tree" "$work/base.squashfs" -comp xz -noappend -quiet -no-progress > "$work/mksquashfs"
size_mib=$(( $(stat -c %s "$work/base.squashfs") / 1048576 ))
if [ "$size_mib" -lt 256 ]; then
  echo "bench: the squashfs is $size_mib MiB, under the 256 MiB the issue asks for" >&2
  exit 1
fi
cp "$work/base.squashfs" "$work/image.squashfs"
/usr/bin/time -f '%e %M' -o "$work/squashfs-time" \
  "$xdkms" install --root "$work/image.squashfs" -q -k "$k" xdkms_test/1.0 > /dev/null
read -r squashfs_s squashfs_kib < "$work/squashfs-time"
"$xdkms" status --root "$work/image.squashfs" | grep -q ': installed$' || {
  echo "bench: the module is not installed in the squashfs" >&2
  exit 1
}
mksquashfs_s=$(cat "$work/mksquashfs")
squashfs_ratio=$(echo "scale=3; $squashfs_s / $mksquashfs_s" | bc)
printf 'xz squashfs %s MiB, one module: mksquashfs %.2f s, xdkms install --root IMAGE %.2f s (peak %s MiB), ratio %s (bound %s)\n' \
  "$size_mib" "$mksquashfs_s" "$squashfs_s" "$(( squashfs_kib / 1024 ))" "$squashfs_ratio" "$squashfs_bound"
if [ "$(echo "$squashfs_ratio > $squashfs_bound" | bc)" = 1 ]; then
  echo "bench: squashfs install ratio above $squashfs_bound" >&2
  exit 1
fi
