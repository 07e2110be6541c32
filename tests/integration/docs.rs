//! The shell completions and the man page in doc/: every option each command's own `--help`
//! lists is in all three, they parse, and the bash completion completes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{run, run_ok, xdkms};

fn doc(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("doc").join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The options a help text lists: `--long` words anywhere, `-x` letters at the start of an
/// option line (argh's `  -m, --module`, kmod's `\t-a, --all`).
fn options_in(help: &str) -> Vec<String> {
    let long = regex_lite::Regex::new(r"--[a-z0-9][a-z0-9-]*").expect("regex");
    let short = regex_lite::Regex::new(r"^\s+(-[a-zA-Z0-9]),").expect("regex");
    let mut found: Vec<String> = Vec::new();
    for line in help.lines() {
        found.extend(short.captures(line).map(|c| c[1].to_string()));
        if line.trim_start().starts_with('-') {
            found.extend(long.find_iter(line).map(|m| m.as_str().to_string()));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Every command's options, from its own help.
fn every_option() -> Vec<(String, Vec<String>)> {
    let help = |args: &[&str]| {
        let out = run(xdkms().args(args));
        text(&out.stdout) + &text(&out.stderr)
    };
    let mut commands = vec![
        ("dkms actions".to_string(), options_in(&help(&["add", "--help"]))),
        ("depmod".to_string(), options_in(&help(&["depmod", "--kmod-version", "34", "--help"]))),
        ("depmod 30".to_string(), options_in(&help(&["depmod", "--kmod-version", "30", "--help"]))),
        ("modinfo".to_string(), options_in(&help(&["modinfo", "--help"]))),
    ];
    for sub in ["list", "extract", "create", "inject"] {
        commands.push((format!("initramfs {sub}"), options_in(&help(&["initramfs", sub, "--help"]))));
    }
    commands.push(("cache prune".to_string(), options_in(&help(&["cache", "prune", "--help"]))));
    // sign-file's usage line: `[-dp]`, `-s <raw sig>`; -k is in its getopt string.
    let usage = help(&["sign-file"]);
    assert!(usage.contains("[-dp]") && usage.contains("-s <raw sig>"), "{usage}");
    commands.push(("sign-file".to_string(), ["-d", "-p", "-s", "-k"].map(String::from).to_vec()));
    commands
}

#[test]
fn every_option_is_in_the_completions_and_the_man_page() {
    let bash = std::fs::read_to_string(doc("completions/xdkms.bash")).expect("bash completion");
    let zsh = std::fs::read_to_string(doc("completions/_xdkms")).expect("zsh completion");
    let man = std::fs::read_to_string(doc("xdkms.8")).expect("man page").replace("\\-", "-");
    let word = |haystack: &str, option: &str| {
        haystack.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).any(|w| w == option)
    };
    let mut missing = Vec::new();
    let commands = every_option();
    assert!(commands[0].1.len() > 30, "the DKMS actions' help lists too few options: {:?}", commands[0].1);
    for (command, options) in &commands {
        for option in options.iter().filter(|o| o.as_str() != "--help" || command != "sign-file") {
            for (file, content) in [("xdkms.bash", &bash), ("_xdkms", &zsh), ("xdkms.8", &man)] {
                if !word(content, option) {
                    missing.push(format!("{command} {option}: not in {file}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    let actions = text(&run(xdkms().arg("--help")).stdout);
    for action in
        ["mktarball", "ldtarball", "match", "kernel_prerm", "generate_mok", "depmod", "initramfs", "sign-file"]
    {
        assert!(actions.contains(action), "top-level help misses {action}");
        for (file, content) in [("xdkms.bash", &bash), ("_xdkms", &zsh), ("xdkms.8", &man)] {
            assert!(content.contains(action), "{action}: not in {file}");
        }
    }
}

#[test]
fn completions_parse_and_complete_and_the_man_page_renders_cleanly() {
    run_ok(Command::new("bash").arg("-n").arg(doc("completions/xdkms.bash")));
    let zsh = run(Command::new("zsh").arg("-n").arg(doc("completions/_xdkms")));
    assert!(zsh.status.success(), "zsh -n: {}", text(&zsh.stderr));
    let groff = run_ok(Command::new("groff").args(["-man", "-ww", "-z"]).arg(doc("xdkms.8")));
    assert!(groff.stderr.is_empty(), "groff warnings: {}", text(&groff.stderr));
    let complete = |line: &str| {
        let script = format!(
            "source {}; COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _xdkms; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            doc("completions/xdkms.bash").display()
        );
        text(&run_ok(Command::new("bash").arg("-c").arg(script)).stdout)
    };
    assert!(complete("xdkms mkt").lines().any(|l| l == "mktarball"));
    assert!(complete("xdkms depmod --out").lines().any(|l| l == "--outdir"));
    assert!(complete("xdkms install --sign-c").lines().any(|l| l == "--sign-command"));
    assert!(complete("xdkms initramfs inject --kmod-f").lines().any(|l| l == "--kmod-features"));
}
