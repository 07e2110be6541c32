#!/usr/bin/env bash
# Installs and caches every real artefact the xdkms test suite and benchmarks compare against:
# reference tools (kmod, cpio, codecs), Debian kernels for amd64 and arm64 unpacked into sysroots,
# cross compiler, busybox for both architectures, and qemu. Idempotent: a second run takes seconds.
#
# The kernel version is whatever Debian's registry serves today for linux-image-amd64; nothing here
# names a version. The cache layout is written to "$XDKMS_TEST_CACHE/env.sh" for the tests to read.
set -euo pipefail

CACHE=${XDKMS_TEST_CACHE:-/var/cache/xdkms-test}
mkdir -p "$CACHE/debs"
log() { printf 'setup: %s\n' "$*" >&2; }

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

# 1. Host packages. Only call apt when something is missing, so a warm run is quick. dkms is
#    Debian's 3.0.10, the reference for the DKMS commands (installed without recommends: no
#    host kernel headers).
host_pkgs=(kmod cpio zstd xz-utils lz4 gzip bzip2 lzma busybox-static initramfs-tools-core
           gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-system-x86 qemu-system-arm
           binutils-mips-linux-gnu binutils-powerpc64-linux-gnu binutils-i686-linux-gnu
           binutils-arm-linux-gnueabihf
           make gcc bc bison flex libelf-dev libssl-dev file patch dkms openssl strace
           meson ninja-build pkg-config libzstd-dev liblzma-dev zlib1g-dev zsh groff-base attr
           e2fsprogs libext2fs-dev comerr-dev fdisk squashfs-tools erofs-utils)
missing=()
for p in "${host_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "adding the arm64 architecture to dpkg"
  $SUDO dpkg --add-architecture arm64
  need_update=1
fi
lists_age() { find /var/lib/apt/lists -maxdepth 1 -name '*binary-arm64_Packages*' -mmin -1440 | grep -q .; }
if [ "${need_update:-0}" = 1 ] || [ ${#missing[@]} -gt 0 ] || ! lists_age; then
  log "apt-get update"
  $SUDO apt-get update -q >/dev/null
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The kernel the registry serves today: linux-image-amd64 depends on linux-image-<abi>-amd64.
image_pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
[ -n "$image_pkg" ] || { log "cannot find the kernel that linux-image-amd64 depends on"; exit 1; }
abi=${image_pkg#linux-image-}
abi=${abi%-amd64}                       # e.g. 6.1.0-56
pkgver=$(apt-cache show "$image_pkg" | sed -n 's/^Version: //p' | head -n1)
series=$(echo "$abi" | cut -d. -f1,2)   # e.g. 6.1
log "kernel ABI $abi, package version $pkgver"

# fetch PKG...: download into the deb cache unless already there (apt-get download names files
# PKG_VERSION_ARCH.deb, with ':' in the version escaped as %3a).
fetch() {
  local want=() p name arch
  for p in "$@"; do
    name=${p%%:*}; arch=${p#*:}; [ "$arch" = "$p" ] && arch=$(dpkg --print-architecture)
    compgen -G "$CACHE/debs/${name}_*_${arch}.deb" >/dev/null || compgen -G "$CACHE/debs/${name}_*_all.deb" >/dev/null || want+=("$p")
  done
  if [ ${#want[@]} -gt 0 ]; then
    log "downloading ${want[*]}"
    # The cache is root's: download as root rather than through the _apt sandbox user.
    (cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "${want[@]}" >/dev/null)
  fi
}
deb() { ls "$CACHE/debs/${1}"_*_"$2".deb 2>/dev/null | head -n1; }

# sysroot ARCH: a directory holding the kernel image, modules, headers (+ -common) and kbuild tools,
# unpacked with dpkg -x exactly as the packages lay them out (absolute build/source symlinks included).
sysroot() {
  local arch=$1 root="$CACHE/$1/root" stamp="$CACHE/$1/stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pkgver" ]; then return; fi
  fetch "linux-image-$abi-$arch:$arch" "linux-headers-$abi-$arch:$arch" \
        "linux-headers-$abi-common" "linux-kbuild-$series:amd64"
  log "unpacking the $arch sysroot"
  rm -rf "$CACHE/$arch"; mkdir -p "$root"
  dpkg -x "$(deb "linux-image-$abi-$arch" "$arch")" "$root"
  dpkg -x "$(deb "linux-headers-$abi-$arch" "$arch")" "$root"
  dpkg -x "$(deb "linux-headers-$abi-common" all)" "$root"
  # Host kbuild tools (fixdep, modpost): the arm64 headers' scripts link points at them.
  dpkg -x "$(deb "linux-kbuild-$series" amd64)" "$root"
  echo "$pkgver" > "$stamp"
}
sysroot amd64
sysroot arm64

# 3. busybox-static for arm64 (amd64 comes from the host package).
if [ ! -x "$CACHE/busybox-arm64/bin/busybox" ]; then
  fetch "busybox-static:arm64"
  rm -rf "$CACHE/busybox-arm64"; mkdir -p "$CACHE/busybox-arm64"
  dpkg -x "$(deb busybox-static arm64)" "$CACHE/busybox-arm64"
fi

# 4. The amd64 module tree recompressed the way the kernel's own Makefile does it
#    (scripts/Makefile.modinst: xz --check=crc32 --lzma2=dict=1MiB; zstd -T0 --rm -f -q),
#    for the compressed-tree comparisons and benchmarks.
recompress() {
  local arch=$1 codec=$2 out="$CACHE/$1-$2" stamp="$CACHE/$1-$2/stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pkgver" ]; then return; fi
  log "recompressing the $arch tree with $codec"
  rm -rf "$out"; mkdir -p "$out/lib/modules"
  cp -a "$CACHE/$arch/root/lib/modules/$abi-$arch" "$out/lib/modules/"
  rm -f "$out/lib/modules/$abi-$arch/build" "$out/lib/modules/$abi-$arch/source"
  case $codec in
    xz)  find "$out/lib/modules" -name '*.ko' -print0 | xargs -0 -P "$(nproc)" -n 64 xz --check=crc32 --lzma2=dict=1MiB ;;
    zst) find "$out/lib/modules" -name '*.ko' -print0 | xargs -0 -P "$(nproc)" -n 64 zstd -q --rm -f ;;
  esac
  echo "$pkgver" > "$stamp"
}
for a in amd64 arm64; do for c in xz zst; do recompress "$a" "$c"; done; done

# 5. Real DKMS packages from Debian, unpacked (their sources sit in usr/src/<name>-<version>):
#    the eight that build against the cached kernel and two that fail to (lttng-modules needs
#    a newer release for this kernel; west-chamber needs xtables-addons).
dkms_pkgs=(v4l2loopback-dkms acpi-call-dkms bbswitch-dkms ddcci-dkms digimend-dkms dm-writeboost-dkms
           evdi-dkms xtrx-dkms lttng-modules-dkms west-chamber-dkms)
if [ "$(cat "$CACHE/dkms-packages/stamp" 2>/dev/null)" != "${dkms_pkgs[*]}" ]; then
  fetch "${dkms_pkgs[@]}"
  log "unpacking the DKMS packages"
  rm -rf "$CACHE/dkms-packages"; mkdir -p "$CACHE/dkms-packages"
  for p in "${dkms_pkgs[@]}"; do
    file=$(ls "$CACHE/debs/${p}"_*.deb | head -n1)
    mkdir -p "$CACHE/dkms-packages/$p"
    dpkg -x "$file" "$CACHE/dkms-packages/$p"
  done
  echo "${dkms_pkgs[*]}" > "$CACHE/dkms-packages/stamp"
fi

# 6. 3cpio, the initramfs tool dracut and Debian use: the yardstick for streaming list and
#    extract (bench/stream.sh). A pinned version, built once into the cache.
threecpio_version=0.14.0
if [ "$("$CACHE/threecpio/bin/3cpio" --version 2>/dev/null)" != "3cpio $threecpio_version" ]; then
  log "building 3cpio $threecpio_version"
  cargo install --quiet --locked --force --version "$threecpio_version" --root "$CACHE/threecpio" threecpio
fi

# 7. kmod 34.2, the newest kmod release (Debian 12 ships 30): the reference for depmod's kmod 34
#    behaviour (--kmod-version 34, -m, -o) and for detecting a root's kmod. Built from the
#    released source the team keeps in shared/vendor (upstream's tarball, checksum pinned), with
#    every compression and OpenSSL, installed into a staging directory, never onto the host.
kmod34_sha256=860db0c80e0bfef7e21613e775301e2abc1fcfdc8ff02214f39b22b81b0da4a4
kmod34_src=
for candidate in "${XDKMS_KMOD34_SRC:-}" "$(dirname "$0")/../../shared/vendor/kmod-34.2-src.tar.xz" \
                 /work/shared/vendor/kmod-34.2-src.tar.xz; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then kmod34_src=$candidate; break; fi
done
if [ "$("$CACHE/kmod34/usr/bin/kmod" --version 2>/dev/null | head -n1)" != "kmod version 34.2" ]; then
  [ -n "$kmod34_src" ] || { log "kmod-34.2-src.tar.xz not found (set XDKMS_KMOD34_SRC to it)"; exit 1; }
  echo "$kmod34_sha256  $kmod34_src" | sha256sum -c --quiet - || { log "$kmod34_src: checksum mismatch"; exit 1; }
  log "building kmod 34.2 from $kmod34_src"
  build=$(mktemp -d)
  tar -C "$build" -xJf "$kmod34_src"
  src=$(find "$build" -maxdepth 2 -name meson_options.txt -printf '%h\n' | head -n1)
  meson setup "$build/out" "$src" --prefix=/usr --sysconfdir=/etc -Ddistconfdir=/usr/lib \
    -Dbuildtype=release -Dmanpages=false -Dbuild-tests=false -Ddocs=false \
    -Dbashcompletiondir=no -Dfishcompletiondir=no -Dzshcompletiondir=no >"$build/log" 2>&1 \
    && ninja -C "$build/out" >>"$build/log" 2>&1 \
    && rm -rf "$CACHE/kmod34.tmp" && DESTDIR="$CACHE/kmod34.tmp" ninja -C "$build/out" install >>"$build/log" 2>&1 \
    || { tail -n 30 "$build/log" >&2; log "kmod 34.2 did not build"; exit 1; }
  rm -rf "$CACHE/kmod34" && mv "$CACHE/kmod34.tmp" "$CACHE/kmod34"
  rm -rf "$build"
fi

cat > "$CACHE/env.sh.tmp" <<ENV
# Written by tests/setup.sh; sourced by the test suite and benchmarks.
XDKMS_KERNEL_PKGVER='$pkgver'
XDKMS_KVER_AMD64='$abi-amd64'
XDKMS_KVER_ARM64='$abi-arm64'
XDKMS_ROOT_AMD64='$CACHE/amd64/root'
XDKMS_ROOT_ARM64='$CACHE/arm64/root'
XDKMS_ROOT_AMD64_XZ='$CACHE/amd64-xz'
XDKMS_ROOT_AMD64_ZST='$CACHE/amd64-zst'
XDKMS_ROOT_ARM64_XZ='$CACHE/arm64-xz'
XDKMS_ROOT_ARM64_ZST='$CACHE/arm64-zst'
XDKMS_BUSYBOX_AMD64='/bin/busybox'
XDKMS_BUSYBOX_ARM64='$CACHE/busybox-arm64/bin/busybox'
XDKMS_DKMS_PACKAGES='$CACHE/dkms-packages'
XDKMS_3CPIO='$CACHE/threecpio/bin/3cpio'
XDKMS_KMOD34='$CACHE/kmod34/usr'
ENV
mv "$CACHE/env.sh.tmp" "$CACHE/env.sh"
log "ready: $CACHE/env.sh"
