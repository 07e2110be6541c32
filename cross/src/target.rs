//! The target table (`cross/targets.tsv`, compiled in): what each architecture is called by
//! uname, dkms, Debian and the kernel, its ELF identity, and where its cross toolchains live.

use std::sync::OnceLock;

/// The table's text, parsed once on first use.
const TABLE: &str = include_str!("../targets.tsv");

/// One architecture xdkms builds for.
#[derive(Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// The row's name (`aarch64`, `mipsel`, ...).
    pub name: &'static str,
    /// What `uname -m` prints on the target: dkms's arch label.
    pub uname: &'static str,
    /// Other names accepted on the command line.
    pub aliases: Vec<&'static str>,
    /// The kernel's ARCH.
    pub kernel_arch: &'static str,
    /// ELF e_machine of the target's modules.
    pub elf_machine: u16,
    /// ELFCLASS64 rather than ELFCLASS32.
    pub elf_64: bool,
    /// Little-endian rather than big-endian.
    pub little_endian: bool,
    /// `.config` symbols that must be `=y` (true) or must not be (false).
    config_rule: Vec<(&'static str, bool)>,
    /// Cross prefixes searched on PATH, in order: Debian's, Yocto's, then Buildroot's.
    pub cross_prefixes: Vec<&'static str>,
    /// The Debian package providing the Debian prefix's gcc.
    pub debian_gcc_package: &'static str,
    /// The qemu system emulator.
    pub qemu: &'static str,
}

impl TargetSpec {
    /// True when a kernel configured with `config` (a `.config`'s text) is this target.
    pub fn matches_config(&self, config: &str) -> bool {
        self.config_rule.iter().all(|(symbol, wanted)| config_set(config, symbol) == *wanted)
    }

    /// True when an ELF file with this identity runs on (or loads into) this target.
    pub fn matches_elf(&self, elf: &ElfIdent) -> bool {
        elf.machine == self.elf_machine && elf.is_64 == self.elf_64 && elf.little_endian == self.little_endian
    }

    /// True when `name` names this target (row name, uname label, alias).
    pub fn is_named(&self, name: &str) -> bool {
        self.name == name || self.uname == name || self.aliases.contains(&name)
    }
}

/// `NAME=y` appears in the config.
pub(crate) fn config_set(config: &str, symbol: &str) -> bool {
    config.lines().any(|l| l.strip_prefix(symbol).is_some_and(|rest| rest == "=y"))
}

/// Every known target, in table order.
pub fn targets() -> &'static [TargetSpec] {
    static PARSED: OnceLock<Vec<TargetSpec>> = OnceLock::new();
    PARSED
        .get_or_init(|| parse_table(TABLE).unwrap_or_else(|line| panic!("cross/targets.tsv line {line} is malformed")))
}

/// Parses the table; Err carries the 1-based number of a malformed line.
fn parse_table(text: &'static str) -> Result<Vec<TargetSpec>, usize> {
    let list = |field: &'static str| -> Vec<&'static str> {
        if field == "-" {
            Vec::new()
        } else {
            field.split(',').collect()
        }
    };
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&'static str> = line.split_whitespace().collect();
        let [name, uname, aliases, kernel_arch, elf, config, debian, yocto, buildroot, qemu] = fields[..] else {
            return Err(index + 1);
        };
        let elf: Vec<&str> = elf.split(',').collect();
        let [machine, class, order] = elf[..] else { return Err(index + 1) };
        let [debian_prefix, debian_gcc_package] = list(debian)[..] else { return Err(index + 1) };
        let mut cross_prefixes = vec![debian_prefix];
        cross_prefixes.extend(list(yocto));
        cross_prefixes.extend(list(buildroot));
        rows.push(TargetSpec {
            name,
            uname,
            aliases: list(aliases),
            kernel_arch,
            elf_machine: machine.parse().map_err(|_| index + 1)?,
            elf_64: match class {
                "64" => true,
                "32" => false,
                _ => return Err(index + 1),
            },
            little_endian: match order {
                "le" => true,
                "be" => false,
                _ => return Err(index + 1),
            },
            config_rule: list(config)
                .into_iter()
                .map(|s| match s.strip_prefix('!') {
                    Some(s) => (s, false),
                    None => (s, true),
                })
                .collect(),
            cross_prefixes,
            debian_gcc_package,
            qemu,
        });
    }
    Ok(rows)
}

/// The target a kernel configuration describes.
pub fn from_config(config: &str) -> Option<&'static TargetSpec> {
    targets().iter().find(|t| t.matches_config(config))
}

/// The targets a command-line name can mean (`mips` is both mips and mipsel).
pub fn by_name(name: &str) -> Vec<&'static TargetSpec> {
    targets().iter().filter(|t| t.is_named(name)).collect()
}

/// The build host's own target.
pub fn host() -> Option<&'static TargetSpec> {
    let name = match std::env::consts::ARCH {
        "x86" => "i686",
        "arm" => "armv7l",
        "powerpc64" if cfg!(target_endian = "little") => "powerpc64le",
        "mips" if cfg!(target_endian = "little") => "mipsel",
        "mips64" => "mips64el",
        other => other,
    };
    targets().iter().find(|t| t.name == name)
}

/// The identity of an ELF file: what it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfIdent {
    pub machine: u16,
    pub is_64: bool,
    pub little_endian: bool,
}

impl ElfIdent {
    /// Reads the identity from the start of an ELF file; None when it is not ELF.
    pub fn parse(head: &[u8]) -> Option<ElfIdent> {
        let header = goblin::elf::Elf::parse_header(head).ok()?;
        Some(ElfIdent {
            machine: header.e_machine,
            is_64: header.e_ident[goblin::elf::header::EI_CLASS] == goblin::elf::header::ELFCLASS64,
            little_endian: header.e_ident[goblin::elf::header::EI_DATA] == goblin::elf::header::ELFDATA2LSB,
        })
    }

    /// A name for messages: the matching target's uname label, else the raw numbers.
    pub fn describe(&self) -> String {
        match targets().iter().find(|t| t.matches_elf(self)) {
            Some(target) => target.uname.to_string(),
            None => format!(
                "ELF machine {} ({}-bit {}-endian)",
                self.machine,
                if self.is_64 { 64 } else { 32 },
                if self.little_endian { "little" } else { "big" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_and_names_are_unique() {
        let all = targets();
        assert_eq!(all.len(), 13);
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.name, b.name);
                // Rows sharing a uname label (mips/mipsel) differ in their ELF identity.
                assert!(a.elf_machine != b.elf_machine || a.elf_64 != b.elf_64 || a.little_endian != b.little_endian);
            }
        }
        assert!(all.iter().all(|t| t.cross_prefixes.len() == 5 && t.cross_prefixes.iter().all(|p| p.ends_with('-'))));
    }

    #[test]
    fn configs_identify_one_target() {
        let cases = [
            ("CONFIG_X86_64=y\nCONFIG_64BIT=y\n", "x86_64", "x86"),
            ("CONFIG_X86_32=y\n", "i686", "x86"),
            ("CONFIG_ARM64=y\n", "aarch64", "arm64"),
            ("CONFIG_ARM=y\n", "armv7l", "arm"),
            ("CONFIG_RISCV=y\nCONFIG_64BIT=y\n", "riscv64", "riscv"),
            ("CONFIG_PPC64=y\nCONFIG_CPU_LITTLE_ENDIAN=y\n", "ppc64le", "powerpc"),
            ("CONFIG_PPC64=y\nCONFIG_CPU_BIG_ENDIAN=y\n", "ppc64", "powerpc"),
            ("CONFIG_MIPS=y\nCONFIG_32BIT=y\nCONFIG_CPU_LITTLE_ENDIAN=y\n", "mips", "mips"),
            ("CONFIG_S390=y\n", "s390x", "s390"),
            ("CONFIG_LOONGARCH=y\n", "loongarch64", "loongarch"),
        ];
        for (config, uname, arch) in cases {
            let matching: Vec<_> = targets().iter().filter(|t| t.matches_config(config)).collect();
            assert_eq!(matching.len(), 1, "{config:?}");
            assert_eq!((matching[0].uname, matching[0].kernel_arch), (uname, arch));
        }
        assert_eq!(from_config("# CONFIG_X86_64 is not set\n"), None);
        assert_eq!(from_config("CONFIG_ARM64=y\nCONFIG_CPU_BIG_ENDIAN=y\n"), None);
    }

    #[test]
    fn names_and_aliases() {
        assert_eq!(by_name("arm64")[0].name, "aarch64");
        assert_eq!(by_name("amd64")[0].name, "x86_64");
        assert_eq!(by_name("mips").len(), 2);
        assert!(by_name("sparc64").is_empty());
        assert!(host().is_some());
    }

    #[test]
    fn elf_identity_of_this_test_binary() {
        let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read exe");
        let ident = ElfIdent::parse(&exe).expect("an ELF file");
        assert!(host().expect("host").matches_elf(&ident));
        assert_eq!(ElfIdent::parse(b"#!/bin/sh\n"), None);
    }
}
