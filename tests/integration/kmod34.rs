//! `depmod --kmod-version 34`: byte-identical to kmod 34.2's depmod (built by the setup script),
//! and the kmod 34 output rules of shared/reference/depmod.md §1.6, §2.4 as properties, with
//! Debian's kmod 30 tools reading the result.

use std::path::Path;
use std::process::Command;

use crate::util::{copy_module_dir, differing_files, make_fixture, refs, run_ok, xdkms, TempDir, KMOD34_FILES};

const BINS: [&str; 5] =
    ["modules.dep.bin", "modules.alias.bin", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin"];

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Walks an index file written in format 2.1 and returns the node offsets in pre-order and in
/// post-order (children by ascending character), plus the end offset of every node.
/// Written independently of xdkms's own reader.
fn node_orders(bytes: &[u8]) -> (Vec<usize>, Vec<usize>, Vec<(usize, usize)>) {
    fn walk(
        bytes: &[u8],
        reference: u32,
        pre: &mut Vec<usize>,
        post: &mut Vec<usize>,
        spans: &mut Vec<(usize, usize)>,
    ) {
        let start = (reference & 0x0FFF_FFFF) as usize;
        let mut at = start;
        pre.push(start);
        if reference & 0x8000_0000 != 0 {
            at += bytes[at..].iter().position(|&b| b == 0).expect("prefix NUL") + 1;
        }
        let mut children = Vec::new();
        if reference & 0x2000_0000 != 0 {
            let (first, last) = (bytes[at] as usize, bytes[at + 1] as usize);
            at += 2;
            for i in 0..=(last - first) {
                children.push(be32(bytes, at + 4 * i));
            }
            at += 4 * (last - first + 1);
        }
        if reference & 0x4000_0000 != 0 {
            let count = be32(bytes, at) as usize;
            at += 4;
            for _ in 0..count {
                at += 4;
                at += bytes[at..].iter().position(|&b| b == 0).expect("value NUL") + 1;
            }
        }
        spans.push((start, at));
        for child in children.into_iter().filter(|&c| c != 0) {
            walk(bytes, child, pre, post, spans);
        }
        post.push(start);
    }
    let (mut pre, mut post, mut spans) = (Vec::new(), Vec::new(), Vec::new());
    walk(bytes, be32(bytes, 8), &mut pre, &mut post, &mut spans);
    (pre, post, spans)
}

/// Nodes laid out back to back from offset 12 to the end of the file, in `order`.
fn contiguous(order: &[usize], spans: &[(usize, usize)], len: usize) -> bool {
    let end_of: std::collections::HashMap<usize, usize> = spans.iter().copied().collect();
    let mut at = 12;
    for &node in order {
        if node != at {
            return false;
        }
        at = end_of[&node];
    }
    at == len
}

fn check_layout(dir: &Path, pre_order: bool) {
    for name in BINS {
        let bytes = std::fs::read(dir.join(name)).expect(name);
        if bytes.len() <= 12 {
            continue; // empty index or absent input
        }
        let (pre, post, spans) = node_orders(&bytes);
        let (want, other) = if pre_order { (&pre, &post) } else { (&post, &pre) };
        assert!(contiguous(want, &spans, bytes.len()), "{name}: nodes are not laid out in the expected order");
        if pre.len() > 1 {
            assert!(!contiguous(other, &spans, bytes.len()), "{name}: layout check cannot tell the orders apart");
        }
        if pre_order {
            assert_eq!(be32(&bytes, 8) & 0x0FFF_FFFF, 12, "{name}: kmod 34 puts the root at offset 12");
        }
    }
}

#[test]
fn kmod34_output_on_the_debian_tree() {
    let r = refs();
    let version = r.get("XDKMS_KVER_AMD64");
    let work = TempDir::new("kmod34");
    let v30 = copy_module_dir(&r.path("XDKMS_ROOT_AMD64"), &version, &work.join("v30"));
    let v34 = copy_module_dir(&r.path("XDKMS_ROOT_AMD64"), &version, &work.join("v34"));
    run_ok(Command::new("depmod").arg("-b").arg(work.join("v30")).arg(&version));
    run_ok(xdkms().args(["depmod", "--kmod-version", "34", "-b"]).arg(work.join("v34")).arg(&version));
    let reference = copy_module_dir(&r.path("XDKMS_ROOT_AMD64"), &version, &work.join("kmod34"));
    run_ok(Command::new(r.path("XDKMS_KMOD34").join("sbin/depmod")).arg("-b").arg(work.join("kmod34")).arg(&version));
    assert_eq!(
        differing_files(&reference, &v34, &KMOD34_FILES),
        Vec::<String>::new(),
        "kmod 34.2's depmod wrote otherwise"
    );

    // Text files do not depend on the release (Debian's modules.order has no repeated lines).
    for name in ["modules.dep", "modules.alias", "modules.softdep", "modules.symbols", "modules.devname"] {
        assert!(std::fs::read(v30.join(name)).expect(name) == std::fs::read(v34.join(name)).expect(name), "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(v34.join("modules.weakdep")).expect("modules.weakdep"),
        "# Weak dependencies extracted from modules themselves.\n"
    );
    // Same sizes, other layout: kmod 30's files are children-first, ours parent-first.
    for name in BINS {
        let a = std::fs::metadata(v30.join(name)).expect(name).len();
        let b = std::fs::metadata(v34.join(name)).expect(name).len();
        assert_eq!(a, b, "{name} size");
        assert_ne!(std::fs::read(v30.join(name)).expect(name), std::fs::read(v34.join(name)).expect(name), "{name}");
    }
    check_layout(&v30, false);
    check_layout(&v34, true);

    // kmod 30's modprobe reads both layouts to the same answers.
    let dump = |root: &Path| {
        let out =
            run_ok(Command::new("modprobe").args(["-C", "/dev/null", "-c", "-d"]).arg(root).args(["-S", &version]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (d30, d34) = (dump(&work.join("v30")), dump(&work.join("v34")));
    assert!(d30.lines().count() > 10_000, "modprobe -c dumped too little");
    assert!(d30 == d34, "modprobe -c differs between the layouts");
    for module in ["ext4", "virtio_blk", "nvme", "btrfs", "snd_hda_intel"] {
        let show = |root: &Path| {
            let out = run_ok(Command::new("modprobe").args(["-C", "/dev/null", "-d"]).arg(root).args([
                "-S",
                &version,
                "--show-depends",
                module,
            ]));
            String::from_utf8_lossy(&out.stdout).replace(&root.display().to_string(), "ROOT")
        };
        assert_eq!(show(&work.join("v30")), show(&work.join("v34")), "{module}");
    }
}

#[test]
fn kmod34_takes_the_first_modules_order_line_and_writes_weakdep() {
    let work = TempDir::new("kmod34-order");
    let version = "6.1.0-fixture";
    let dir = make_fixture("tree", work.path(), version);
    // core_a listed again at the end: kmod 30 orders it by that last line, kmod 34 by its first.
    let mut order = std::fs::read(dir.join("modules.order")).expect("modules.order");
    order.extend_from_slice(b"kernel/drivers/core_a.ko\n");
    std::fs::write(dir.join("modules.order"), order).expect("write");
    let first_module = |kmod: &str| {
        run_ok(xdkms().args(["depmod", "--kmod-version", kmod, "-b"]).arg(work.path()).arg(version));
        let dep = std::fs::read_to_string(dir.join("modules.dep")).expect("modules.dep");
        dep.lines().next().expect("a line").split(':').next().expect("path").to_string()
    };
    assert_eq!(first_module("34"), "kernel/drivers/core_a.ko");
    let reference = TempDir::new("kmod34-order-reference");
    crate::util::copy_all(work.path(), &reference.join("root"));
    run_ok(
        Command::new(refs().path("XDKMS_KMOD34").join("sbin/depmod"))
            .arg("-b")
            .arg(reference.join("root"))
            .arg(version),
    );
    let reference_dir = reference.join("root/lib/modules").join(version);
    assert_eq!(
        differing_files(&reference_dir, &dir, &KMOD34_FILES),
        Vec::<String>::new(),
        "kmod 34.2's depmod wrote otherwise"
    );
    check_layout(&dir, true);
    assert_eq!(
        std::fs::read_to_string(dir.join("modules.weakdep")).expect("weakdep"),
        "# Weak dependencies extracted from modules themselves.\nweakdep mod_d core_a\n"
    );
    assert_eq!(first_module("30"), "kernel/drivers/core-b.ko");
    check_layout(&dir, false);
}
