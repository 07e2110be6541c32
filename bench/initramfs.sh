#!/usr/bin/env bash
# initramfs injection benchmark on a zstd image of about 100 MiB uncompressed, shaped like a large
# storage-capable initramfs: ~30 MiB of Debian's amd64 modules (block, NVMe, md, ATA, virtio,
# lib, crypto, ext4/btrfs/xfs/fat) and, standing in for userspace and firmware, the kernel
# headers and the (already compressed) kernel image as a firmware blob. Injects virtio_blk, nvme and e1000e with their closures. Every module already in the
# image is re-indexed, so append mode's cost also follows the image's module count.
# ROOT is a hard-linked copy of the Debian amd64 module tree indexed by `xdkms depmod`, as a
# built rootfs is (inject then reads ROOT's indexes instead of every module).
# Bounds (issue "initramfs images"): append mode <= 5% of rewrite mode's time; rewrite mode
# <= 1.3 x `zstd -dc | zstd -c -T0` at the same level (15). Medians of 3 alternating runs.
#   bash bench/initramfs.sh [ROUNDS]
set -euo pipefail
rounds=${1:-3}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
level=15

root=$work/root
mkdir -p "$root/lib/modules"
cp -al "$XDKMS_ROOT_AMD64/lib/modules/$XDKMS_KVER_AMD64" "$root/lib/modules/"
rm -f "$root/lib/modules/$XDKMS_KVER_AMD64/"{build,source}
"$xdkms" depmod -b "$root" "$XDKMS_KVER_AMD64"

tree=$work/tree
moddir=$tree/lib/modules/$XDKMS_KVER_AMD64
mkdir -p "$moddir" "$tree/bin" "$tree/usr/src"
(cd "$XDKMS_ROOT_AMD64/lib/modules/$XDKMS_KVER_AMD64" && find kernel/drivers/{nvme,md,block,ata,virtio} \
  kernel/lib kernel/crypto kernel/fs/{ext4,btrfs,xfs,jbd2,fat,nls} -name '*.ko' | cpio --quiet -pdm "$moddir")
headers=$(ls -d "$XDKMS_ROOT_AMD64"/usr/src/linux-headers-*-common | head -n1)
cp -a "$headers" "$tree/usr/src/headers"
mkdir -p "$tree/lib/firmware/vendor"
cp "$XDKMS_ROOT_AMD64/boot/vmlinuz-$XDKMS_KVER_AMD64" "$tree/lib/firmware/vendor/blob.bin"
cp /bin/busybox "$tree/bin/busybox"
(cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) > "$work/image.cpio"
zstd -q -"$level" -T0 "$work/image.cpio" -o "$work/image.img"
size=$(stat -c %s "$work/image.cpio")

inject() { "$xdkms" initramfs inject "$work/image.img" --root "$root" -k "$XDKMS_KVER_AMD64" \
             -o "$work/out.img" "$@" virtio_blk nvme e1000e 2>/dev/null; }
t() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
for _ in $(seq "$rounds"); do
  t sh -c "zstd -dcq '$work/image.img' | zstd -q -$level -c -T0 > /dev/null" >> "$work/zstd"
  t inject --mode rewrite >> "$work/rewrite"
  t inject --mode append >> "$work/append"
done
z=$(median < "$work/zstd"); r=$(median < "$work/rewrite"); a=$(median < "$work/append")
awk -v z="$z" -v r="$r" -v a="$a" -v n="$rounds" -v mib="$((size >> 20))" 'BEGIN {
  printf "initramfs benchmark: %d MiB zstd-%d image, 3 modules, %d CPUs, median of %d\n", mib, 15, '"$(nproc)"', n
  printf "zstd -dc | zstd -c -T0  %.2f s\nrewrite                 %.2f s  ratio to zstd %.2f (bound 1.30)\nappend                  %.2f s  ratio to rewrite %.3f (bound 0.050)\n", z, r, r / z, a, a / r
  exit (r / z <= 1.3 && a / r <= 0.05) ? 0 : 1 }' || { echo "bench: a bound was missed" >&2; exit 1; }
echo "bench: all bounds met"
