//! Boot proofs: a busybox initramfs with no modules, modules injected by xdkms, the Debian kernel
//! under qemu loading them by the devices' modaliases and reading a marker from the disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{refs, run_ok, xdkms, TempDir};

const MARKER: &str = "XDKMS-MARKER-5f3a";

#[derive(Clone, Copy)]
enum Disk {
    Virtio,
    Nvme,
}

/// A busybox initramfs without modules (tests/fixtures/make-busybox-initramfs.sh).
pub fn base_image(work: &TempDir, busybox: &Path, codec: &str) -> PathBuf {
    let image = work.join(format!("base-{codec}.img"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-busybox-initramfs.sh");
    run_ok(Command::new("bash").arg(script).arg(busybox).arg(&image).arg(codec));
    image
}

fn disk(work: &TempDir) -> PathBuf {
    let disk = work.join("disk.img");
    let mut sector = MARKER.as_bytes().to_vec();
    sector.resize(1 << 20, 0);
    std::fs::write(&disk, sector).expect("disk");
    disk
}

/// The qemu command for a Debian kernel of `arch` (TCG: works without KVM), with `append` added
/// to the kernel command line.
fn qemu(arch: &str, kernel: &Path, image: &Path, append: &str) -> Command {
    let mut qemu = match arch {
        "amd64" => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-accel", "tcg", "-append", &format!("console=ttyS0 panic=-1 quiet {append}")]);
            c
        }
        _ => {
            let mut c = Command::new("qemu-system-aarch64");
            c.args([
                "-M",
                "virt",
                "-cpu",
                "cortex-a57",
                "-append",
                &format!("console=ttyAMA0 panic=-1 quiet {append}"),
            ]);
            c
        }
    };
    qemu.args(["-m", "512", "-nographic", "-no-reboot"]).arg("-kernel").arg(kernel).arg("-initrd").arg(image);
    qemu
}

/// Runs qemu (at most 180 s) and returns the `xdkms-boot:` lines of the console.
fn console_lines(qemu: &Command) -> String {
    let out = Command::new("timeout").arg("180").arg(qemu.get_program()).args(qemu.get_args()).output().expect("qemu");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    console.lines().filter(|l| l.contains("xdkms-boot:")).map(|l| format!("{l}\n")).collect()
}

/// Boots `image` with a disk and returns the `xdkms-boot:` lines.
fn boot(arch: &str, kernel: &Path, image: &Path, disk: &Path, kind: Disk) -> String {
    let drive = format!("file={},if=none,id=d0,format=raw", disk.display());
    let mut qemu = qemu(arch, kernel, image, "");
    qemu.arg("-drive").arg(drive);
    match kind {
        Disk::Virtio => qemu.args(["-device", "virtio-blk-pci,drive=d0"]),
        Disk::Nvme => qemu.args(["-device", "nvme,serial=xdkms,drive=d0"]),
    };
    console_lines(&qemu)
}

/// Boots `image` with `xdkms.modprobe=MODULE`: the init loads the module by name. Returns the
/// `xdkms-boot:` lines.
pub fn boot_and_modprobe(arch: &str, kernel: &Path, image: &Path, module: &str) -> String {
    console_lines(&qemu(arch, kernel, image, &format!("xdkms.modprobe={module}")))
}

/// Injects `items` into a fresh base image of `codec`, boots it, and checks the marker was read
/// through the expected driver.
fn inject_and_boot(arch: &str, codec: &str, mode: &str, kind: Disk, items: &[&str], driver: &str) {
    let r = refs();
    let (root, version, busybox) = match arch {
        "amd64" => (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"), r.path("XDKMS_BUSYBOX_AMD64")),
        _ => (r.path("XDKMS_ROOT_ARM64"), r.get("XDKMS_KVER_ARM64"), r.path("XDKMS_BUSYBOX_ARM64")),
    };
    let work = TempDir::new(&format!("boot-{arch}-{codec}-{mode}"));
    let base = base_image(&work, &busybox, codec);
    let disk = disk(&work);
    let kernel = root.join("boot").join(format!("vmlinuz-{version}"));
    // Without modules the disk is never seen: the proof depends on the injection.
    let before = boot(arch, &kernel, &base, &disk, kind);
    assert!(before.contains("xdkms-boot: kernel"), "the base image did not boot:\n{before}");
    assert!(!before.contains(MARKER), "the disk was readable without injected drivers:\n{before}");
    let image = work.join("injected.img");
    run_ok(
        xdkms()
            .args(["initramfs", "inject", "--mode", mode, "--root"])
            .arg(&root)
            .args(["-k", &version, "-o"])
            .arg(&image)
            .arg(&base)
            .args(items),
    );
    let after = boot(arch, &kernel, &image, &disk, kind);
    assert!(after.contains("marker on /dev/") && after.contains(MARKER), "{arch} {codec} {mode}: no marker:\n{after}");
    let loaded = after.lines().find(|l| l.contains("modules:")).unwrap_or_default();
    assert!(loaded.split_whitespace().any(|m| m == driver), "{driver} not loaded: {loaded}");
}

#[test]
fn amd64_gzip_virtio_and_nvme_both_modes() {
    inject_and_boot("amd64", "gzip", "rewrite", Disk::Virtio, &["virtio_blk", "virtio_pci"], "virtio_blk");
    inject_and_boot("amd64", "gzip", "append", Disk::Nvme, &["nvme"], "nvme");
}

#[test]
fn amd64_xz_virtio_and_nvme_both_modes() {
    inject_and_boot("amd64", "xz", "append", Disk::Virtio, &["virtio_blk", "virtio_pci"], "virtio_blk");
    inject_and_boot("amd64", "xz", "rewrite", Disk::Nvme, &["nvme"], "nvme");
}

#[test]
fn amd64_zstd_virtio_and_nvme_both_modes() {
    // The virtio drivers named by the modaliases the devices report.
    inject_and_boot(
        "amd64",
        "zstd",
        "rewrite",
        Disk::Virtio,
        &["pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", "virtio:d00000002v00001AF4"],
        "virtio_blk",
    );
    inject_and_boot("amd64", "zstd", "append", Disk::Nvme, &["nvme"], "nvme");
}

#[test]
fn arm64_virt_machine_virtio_both_modes() {
    inject_and_boot("arm64", "xz", "rewrite", Disk::Virtio, &["virtio_blk", "virtio_pci"], "virtio_blk");
    inject_and_boot("arm64", "zstd", "append", Disk::Virtio, &["virtio_blk", "virtio_pci"], "virtio_blk");
}

/// Copies `path` out of the ext4 filesystem `offset` bytes into `disk` (debugfs).
fn dump_from_disk(disk: &Path, offset: u64, path: &str, to: &Path) {
    let fs = format!("{}?offset={offset}", disk.display());
    run_ok(Command::new("debugfs").arg("-R").arg(format!("dump {path} {}", to.display())).arg(fs));
    assert!(to.metadata().is_ok_and(|m| m.len() > 0), "{path} is not in the disk");
}

/// Boots the kernel and initramfs found in the disk's root partition, with the disk on virtio.
fn boot_disk(work: &TempDir, disk: &Path, version: &str, round: &str) -> String {
    let (kernel, initrd) = (work.join(format!("vmlinuz-{round}")), work.join(format!("initrd-{round}")));
    dump_from_disk(disk, 1 << 20, &format!("/boot/vmlinuz-{version}"), &kernel);
    dump_from_disk(disk, 1 << 20, &format!("/boot/initrd.img-{version}"), &initrd);
    boot("amd64", &kernel, &initrd, disk, Disk::Virtio)
}

/// Issue 12's proof: a GPT disk whose ext4 root holds Debian's kernel, headers and an
/// initramfs without the virtio disk driver boots to a missing root. `xdkms install --root
/// disk.img` of the DKMS pair (B uses A's export) and `xdkms initramfs inject --root disk.img
/// --in-root /boot/initrd.img-K virtio_blk virtio_pci` later, without a mount: e2fsck finds the
/// filesystem clean, the same disk boots, its root is mounted from /dev/vda1, and the rootfs's
/// `modprobe xdkms_pair_b` loads A and B.
#[test]
fn amd64_disk_image_customized_offline_boots_and_loads_the_dkms_pair() {
    let r = refs();
    let (cache, version, busybox) =
        (r.path("XDKMS_ROOT_AMD64"), r.get("XDKMS_KVER_AMD64"), r.path("XDKMS_BUSYBOX_AMD64"));
    let work = TempDir::new("boot-disk-image");
    let disk = work.join("disk.img");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-bootable-disk.sh");
    let xdkms_bin = crate::util::xdkms().get_program().to_owned();
    run_ok(Command::new("bash").arg(script).arg(&busybox).arg(&cache).arg(&version).arg(xdkms_bin).arg(&disk));

    let before = boot_disk(&work, &disk, &version, "before");
    assert!(before.contains("xdkms-boot: initramfs of"), "the disk's kernel did not boot:\n{before}");
    assert!(before.contains("xdkms-boot: no root device"), "the root was found without virtio_blk:\n{before}");

    let pair = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkms/xdkms_pair-1.0");
    run_ok(xdkms().args(["install", "--root"]).arg(&disk).args(["-k", &version]).arg(&pair));
    run_ok(xdkms().args(["initramfs", "inject", "--root"]).arg(&disk).args([
        "-k",
        &version,
        "--in-root",
        &format!("/boot/initrd.img-{version}"),
        "virtio_blk",
        "virtio_pci",
    ]));
    let fsck =
        crate::util::run(Command::new("e2fsck").arg("-fn").arg(format!("{}?offset={}", disk.display(), 1 << 20)));
    assert_eq!(fsck.status.code(), Some(0), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));

    let after = boot_disk(&work, &disk, &version, "after");
    assert!(after.contains("xdkms-boot: root /dev/vda1 ext4"), "the root was not mounted from the disk:\n{after}");
    assert!(after.contains("modprobe xdkms_pair_b: ok"), "modprobe failed:\n{after}");
    let loaded = after.lines().find(|l| l.contains("modules:")).unwrap_or_default();
    for module in ["xdkms_pair_a", "xdkms_pair_b", "virtio_blk"] {
        assert!(loaded.split_whitespace().any(|m| m == module), "{module} not loaded: {loaded}");
    }
}
