//! The module and index readers on damaged input: errors or warnings, never a panic.
//! Deterministic mutations of real files (the cargo-fuzz targets in fuzz/ do the same, longer).

use xdkms::index::Index;
use xdkms::module::elf::ReadOptions;
use xdkms::module::{ModuleElf, ModuleImage};

use crate::util::{make_fixture, refs, run_ok, xdkms, TempDir};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 17
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Damages `input` in one of several ways: flipped bytes, a field set to an extreme value,
/// truncation, or a copied block.
fn mutate(input: &[u8], rng: &mut Lcg) -> Vec<u8> {
    let mut data = input.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let at = rng.below(data.len().saturating_sub(8));
            let value: [u8; 8] = match rng.below(3) {
                0 => [0xff; 8],
                1 => [0; 8],
                _ => rng.next().to_le_bytes(),
            };
            let end = (at + 1 + rng.below(8)).min(data.len());
            data[at..end].copy_from_slice(&value[..end - at]);
        }
        2 => data.truncate(rng.below(data.len())),
        _ => {
            let len = rng.below(256);
            let from = rng.below(data.len().saturating_sub(len));
            let to = rng.below(data.len().saturating_sub(len));
            let block = data[from..(from + len).min(data.len())].to_vec();
            data[to..to + block.len()].copy_from_slice(&block);
        }
    }
    data
}

#[test]
fn module_reader_survives_damaged_modules() {
    let fx = TempDir::new("robust-elf");
    let dir = make_fixture("tree", fx.path(), "6.1.0-fixture");
    let r = refs();
    let debian = r.path("XDKMS_ROOT_AMD64").join("lib/modules").join(r.get("XDKMS_KVER_AMD64"));
    let seeds: Vec<Vec<u8>> = [
        dir.join("kernel/drivers/core_a.ko"),
        dir.join("kernel/drivers/core-b.ko"),
        dir.join("extra/mod_c.ko"),
        dir.join("extra/mod_d.ko"),
        debian.join("kernel/drivers/block/virtio_blk.ko"),
    ]
    .iter()
    .map(|p| std::fs::read(p).expect("seed"))
    .collect();
    let mut rng = Lcg(42);
    let mut rejected = 0;
    for round in 0..6000 {
        let data = mutate(&seeds[round % seeds.len()], &mut rng);
        let image = ModuleImage::Decompressed(data);
        if ModuleElf::parse(&image, ReadOptions { export_crcs: true }).is_err() {
            rejected += 1;
        }
    }
    // The mutations do reach the error paths (and the rest parsed without panicking).
    assert!(rejected > 100, "only {rejected} of 6000 damaged modules were rejected");
}

#[test]
fn index_reader_survives_damaged_indexes() {
    let fx = TempDir::new("robust-index");
    let dir = make_fixture("tree", fx.path(), "6.1.0-fixture");
    run_ok(xdkms().arg("depmod").arg("-b").arg(fx.path()).arg("6.1.0-fixture"));
    let seeds: Vec<Vec<u8>> = ["modules.dep.bin", "modules.alias.bin", "modules.symbols.bin"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect("seed"))
        .collect();
    let mut rng = Lcg(7);
    let mut failures = 0;
    for round in 0..6000 {
        let data = mutate(&seeds[round % seeds.len()], &mut rng);
        match Index::new(&data) {
            Ok(index) => {
                let looked_up = index.get(b"core_a").is_err();
                let dumped = index.entries().is_err();
                failures += usize::from(looked_up || dumped);
            }
            Err(_) => failures += 1,
        }
    }
    assert!(failures > 100, "only {failures} of 6000 damaged indexes were noticed");
}

#[test]
fn depmod_survives_a_tree_of_damaged_modules() {
    let fx = TempDir::new("robust-depmod");
    let dir = make_fixture("tree", fx.path(), "6.1.0-fixture");
    let seed = std::fs::read(dir.join("kernel/drivers/core_a.ko")).expect("seed");
    let mut rng = Lcg(99);
    for i in 0..300 {
        std::fs::write(dir.join(format!("kernel/damaged{i}.ko")), mutate(&seed, &mut rng)).expect("write");
    }
    // Exit 0 with warnings (kmod lists broken modules without dependencies) or 1 if the damage
    // made a dependency cycle or an unindexable alias; never a crash.
    let out = std::process::Command::new(crate::util::xdkms_bin())
        .arg("depmod")
        .arg("-b")
        .arg(fx.path())
        .arg("6.1.0-fixture")
        .output()
        .expect("run");
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
