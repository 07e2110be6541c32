#!/usr/bin/env bash
# The quick start: builds xdkms, makes a small target root with three modules (one in
# updates/dkms, as DKMS installs them), indexes it with `xdkms depmod -b`, looks a module up by
# its device alias with `xdkms modinfo`, and injects the driver a virtio disk needs, with its
# dependencies, into an initramfs, then indexes the same root as an ext4 image. Needs cargo, the
# host's assembler, and e2fsprogs' static libext2fs (Debian's libext2fs-dev and comerr-dev:
# installed here when missing and apt-get is there).
# When kmod's depmod is installed, the indexes are also checked byte for byte against it.
# When the Debian kernel headers tests/setup.sh caches are there, it also builds and installs a
# bundled DKMS package into a root made of them (`xdkms install --root`), and a bundled pair of
# modules into an arm64 root, cross-compiled.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /usr/lib/x86_64-linux-gnu/libext2fs.a ] || [ ! -e /usr/lib/x86_64-linux-gnu/libcom_err.a ]; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "== installing libext2fs-dev and comerr-dev (xdkms links libext2fs statically)"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends libext2fs-dev comerr-dev >/dev/null
fi
cargo build --release --quiet
xdkms=target/x86_64-unknown-linux-gnu/release/xdkms
root=$(mktemp -d "${TMPDIR:-/tmp}/xdkms-demo.XXXXXX")
trap 'rm -rf "$root"' EXIT
version=6.1.0-demo

bash tests/fixtures/make-modules.sh demo "$root" "$version"
echo "== target root: $root"
(cd "$root" && find lib -type f | sort)

echo "== xdkms depmod -b ROOT $version"
"$xdkms" depmod -b "$root" "$version"
echo "-- modules.dep"
cat "$root/lib/modules/$version/modules.dep"
echo "-- modules.alias"
cat "$root/lib/modules/$version/modules.alias"

echo "== xdkms modinfo -b ROOT virtio:d00000002v00001AF4 (the alias a virtio block device reports)"
"$xdkms" modinfo -b "$root" -k "$version" virtio:d00000002v00001AF4

echo "== xdkms initramfs inject: the virtio disk driver, by modalias, into a small image"
mkdir -p "$root/image/etc"
echo "demo" > "$root/image/etc/hostname"
"$xdkms" initramfs create "$root/image" --compress zstd -o "$root/initrd.img"
"$xdkms" initramfs inject "$root/initrd.img" --root "$root" -k "$version" virtio:d00000002v00001AF4
"$xdkms" initramfs list --segments "$root/initrd.img"

if command -v depmod >/dev/null; then
  cp -a "$root" "$root.kmod"
  trap 'rm -rf "$root" "$root.kmod"' EXIT
  depmod -b "$root.kmod" "$version"
  for f in "$root/lib/modules/$version"/modules.*; do
    cmp -s "$f" "$root.kmod/lib/modules/$version/$(basename "$f")" || { echo "differs from kmod: $(basename "$f")"; exit 1; }
  done
  echo "== every index file is byte-identical to kmod's depmod"
fi

if command -v mke2fs >/dev/null; then
  echo "== the same root as an ext4 image: xdkms depmod -b root.ext4 $version (no mount, no root)"
  image_dir=$(mktemp -d "${TMPDIR:-/tmp}/xdkms-demo-image.XXXXXX")
  trap 'rm -rf "$root" "$root.kmod" "$image_dir"' EXIT
  mke2fs -q -F -t ext4 -d "$root" "$image_dir/root.ext4" 32M >/dev/null
  "$xdkms" depmod -b "$image_dir/root.ext4" "$version"
  "$xdkms" modinfo -b "$image_dir/root.ext4" -k "$version" -F filename virtio:d00000002v00001AF4
  e2fsck -fn "$image_dir/root.ext4" >/dev/null 2>&1 && echo "== e2fsck -fn: the filesystem is clean"
fi

cache=${XDKMS_TEST_CACHE:-/var/cache/xdkms-test}
if [ -r "$cache/env.sh" ]; then
  # shellcheck source=/dev/null
  . "$cache/env.sh"
  # debian_root CACHED-ROOT KERNEL TARGET: a root with the cached kernel's headers (hard links)
  # and the module lists depmod reads, but none of its modules.
  debian_root() {
    mkdir -p "$3/lib/modules/$2" "$3/etc"
    echo 'ID=debian' > "$3/etc/os-release"
    cp -al "$1/usr" "$3/usr" 2>/dev/null || cp -a "$1/usr" "$3/usr"
    cp "$1/lib/modules/$2"/modules.{order,builtin,builtin.modinfo} "$3/lib/modules/$2/"
    ln -s "/usr/src/linux-headers-$2" "$3/lib/modules/$2/build"
  }
  k=$XDKMS_KVER_AMD64
  target=$root/dkms-root
  debian_root "$XDKMS_ROOT_AMD64" "$k" "$target"
  echo "== xdkms install --root ROOT -k $k tests/fixtures/dkms/xdkms_test-1.0 (Debian's headers in ROOT)"
  "$xdkms" install --root "$target" -k "$k" tests/fixtures/dkms/xdkms_test-1.0
  "$xdkms" status --root "$target"
  "$xdkms" modinfo -b "$target" -k "$k" xdkms_test | grep -E '^(filename|version|description|vermagic):'

  # The same for the arm64 kernel, cross-compiled: no -k, ARCH or CROSS_COMPILE given; xdkms reads
  # them off the root's kernel and finds aarch64-linux-gnu-gcc on PATH.
  k=$XDKMS_KVER_ARM64
  target=$root/arm64-root
  debian_root "$XDKMS_ROOT_ARM64" "$k" "$target"
  echo "== xdkms install --root ARM64-ROOT tests/fixtures/dkms/xdkms_pair-1.0 (cross-compiled for $k)"
  "$xdkms" install --root "$target" -q tests/fixtures/dkms/xdkms_pair-1.0
  "$xdkms" status --root "$target"
  grep xdkms_pair "$target/lib/modules/$k/modules.dep"
  "$xdkms" modinfo -b "$target" -k "$k" xdkms_pair_b | grep -E '^(filename|depends|vermagic|built_for):'
else
  echo "== (run tests/setup.sh to also build a DKMS package against Debian's kernel headers)"
fi
