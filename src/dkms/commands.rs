//! Running the commands of a build (patch, make, the dkms.conf scripts) and the tools around it
//! (strip, sign-file): in the build's sandbox when there is one, output to make.log or the
//! console, and a failure's message carrying the tail of what the command printed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::sandbox::Sandbox;
use super::{Ctx, Failure, Result};

/// Lines of a failed make.log, or of a tool's error output, quoted in a failure.
const LOG_TAIL_LINES: usize = 20;

/// The variables dkms unsets at its start, so that the kernel's own flags apply.
const UNSET_FOR_BUILDS: [&str; 5] = ["CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS"];

/// Runs a shell command in `dir` with its output appended to `log` (else on the console, or
/// nowhere with `quiet`); its exit status.
pub fn run_logged(
    sandbox: Option<&Sandbox>,
    jobserver: Option<&jobserver::Client>,
    script: &str,
    dir: &Path,
    log: Option<&Path>,
    quiet: bool,
    env: &[(String, String)],
) -> Result<std::process::ExitStatus> {
    let (out, err) = match log {
        Some(log) => {
            let out = std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .map_err(|e| Failure::io(format!("opening {}", log.display()), e))?;
            let err = out.try_clone().map_err(|e| Failure::io(format!("opening {}", log.display()), e))?;
            (Stdio::from(out), Stdio::from(err))
        }
        None if quiet => (Stdio::null(), Stdio::null()),
        None => (Stdio::inherit(), Stdio::inherit()),
    };
    let mut command = match sandbox {
        Some(sandbox) => sandbox.command("bash", dir),
        None => Command::new("bash"),
    };
    command.arg("-c").arg(script).current_dir(dir).stdin(Stdio::null()).stdout(out).stderr(err);
    // dkms unsets these so that the kernel's own flags apply.
    for name in UNSET_FOR_BUILDS {
        command.env_remove(name);
    }
    // Under a parent make (a plan's Makefile, a Buildroot recipe) the module's make would say
    // `make[2]:` where a run of its own says `make:`: the build and its log are the same
    // whichever engine started xdkms.
    command.env_remove("MAKELEVEL");
    let mut env = env.to_vec();
    if let Some(jobserver) = jobserver {
        jobserver.configure_make(&mut command);
        // Our MAKEFLAGS additions go after the jobserver's.
        let shared = command
            .get_envs()
            .find(|(k, _)| *k == "MAKEFLAGS")
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
            .unwrap_or_default();
        for (name, value) in &mut env {
            if name == "MAKEFLAGS" {
                *value = format!("{shared} {value}");
            }
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command.status().map_err(|e| Failure::io("running bash (bash is required)", e))
}

/// The variables bash exports after sourcing `file` (output discarded, as dkms 3.4 sources
/// framework.conf's build_environment) that are new or differ from this process's, with the
/// variables dkms unsets (CC, CFLAGS, ...) unset while it runs.
pub fn exported_by(
    file: &Path,
    sandbox: Option<&Sandbox>,
    variables: &[(&str, String)],
) -> std::io::Result<Vec<(String, String)>> {
    // `NAME=value` words up to `--` become shell variables (not exported), then the file.
    let script = r#"while [ "$1" != -- ]; do declare -- "${1%%=*}=${1#*=}"; shift; done; shift
source "$1" >/dev/null 2>&1; env -0"#;
    let file = sandbox.map_or_else(|| file.to_path_buf(), |s| s.target_path(file));
    let mut command = match sandbox {
        Some(sandbox) => sandbox.command("bash", Path::new("/")),
        None => Command::new("bash"),
    };
    command.arg("-c").arg(script).arg("bash");
    command.args(variables.iter().map(|(name, value)| format!("{name}={value}")));
    command.arg("--").arg(&file).stdin(Stdio::null()).stderr(Stdio::null());
    for name in UNSET_FOR_BUILDS {
        command.env_remove(name);
    }
    let output = command.output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!("bash exited with {} while sourcing it", output.status)));
    }
    // bash's own bookkeeping is no setting of the file's.
    let ours = |name: &str| matches!(name, "SHLVL" | "_" | "PWD" | "OLDPWD");
    Ok(output
        .stdout
        .split(|&b| b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok()?.split_once('='))
        .filter(|(name, value)| !ours(name) && std::env::var(name).ok().as_deref() != Some(*value))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

/// The last lines of a log, indented, for an error message.
pub fn log_tail(log: &Path) -> Vec<String> {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let mut out = vec![format!("Last lines of make.log:")];
    out.extend(lines[start..].iter().map(|l| format!("  {l}")));
    out
}

/// Quotes a word for bash.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// dkms's run_build_script: `SCRIPT args` relative to `dir`, run there if executable, else a
/// warning. Its status only matters for pre_install.
pub fn run_script(ctx: &Ctx, kind: &str, value: &str, dir: &Path) -> bool {
    run_script_in(ctx, ctx.tree_sandbox(), kind, value, dir, &[])
}

/// [`run_script`], inside the build's sandbox when there is one.
pub fn run_script_in(
    ctx: &Ctx,
    sandbox: Option<&Sandbox>,
    kind: &str,
    value: &str,
    dir: &Path,
    environment: &[(String, String)],
) -> bool {
    let mut words = value.split_whitespace();
    let Some(script) = words.next() else { return true };
    // A script may read anything in the root: on an image's partial extraction, the run starts
    // again on the whole image.
    if let Some(start_again) = ctx.partial_root {
        start_again();
    }
    let path = dir.join(script);
    let executable = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    ctx.say("");
    if !executable {
        ctx.warn(format!("The {kind} script is not executable."));
        return true;
    }
    ctx.say(format!("Running the {kind} script:"));
    let mut command = match sandbox {
        Some(sandbox) => sandbox.command(sandbox.target_path(&path), dir),
        None => Command::new(&path),
    };
    command.args(words).current_dir(dir).stdin(Stdio::null());
    command.envs(environment.iter().map(|(name, value)| (name, value)));
    if ctx.quiet {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    }
    matches!(command.status(), Ok(s) if s.success())
}

/// Runs a tool to completion with its output captured; a failure (it cannot start, or exits
/// non-zero) carries what it was doing, its status and the last lines it printed on stderr.
pub fn run_tool(command: &mut Command, what: &str) -> std::result::Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run {}: {e}", command.get_program().to_string_lossy()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    Err(format!("{what} failed ({}){}{tail}", output.status, if tail.is_empty() { "" } else { ":\n" }))
}

/// framework.conf's `post_transaction` (dkms 3.4), if set.
pub fn post_transaction_command(ctx: &Ctx, kernel: &str) -> Option<String> {
    let scope = super::conf::Scope { kernelver: kernel.to_string(), ..Default::default() };
    let framework = super::conf::evaluate(&ctx.framework_files, &scope, &["post_transaction"], None).ok()?;
    Some(framework.scalar("post_transaction").to_string()).filter(|c| !c.trim().is_empty())
}

/// dkms 3.4's execute_post_transaction: the command run by bash (in the tree's sandbox inside a
/// root), its output in `<dkms_tree>/post_transaction.log` framed as invoke_command frames it.
/// Its failure is reported, not fatal: the transaction itself succeeded.
pub fn post_transaction(ctx: &Ctx, command: &str, kernel: &str) -> Result<()> {
    const WHAT: &str = "Executing post-transaction command";
    // As a script may: the command reads what it likes.
    if let Some(start_again) = ctx.partial_root {
        start_again();
    }
    let log = ctx.in_root(&ctx.dkms_tree.join("post_transaction.log"))?;
    let header = format!("\n{WHAT}\n# command: {command}\n");
    ctx.root.write(&log, header.as_bytes()).map_err(|e| Failure::io(format!("writing {}", log.display()), e))?;
    ctx.say_partial(&format!("{WHAT}..."));
    let started = std::time::Instant::now();
    // dkms evals the command in its own shell, where `$kernelver` is set.
    let script = format!("kernelver={}\n{command}", shell_quote(kernel));
    let status =
        run_logged(ctx.tree_sandbox(), None, &script, &ctx.in_root(&ctx.dkms_tree)?, Some(&log), ctx.quiet, &[])?;
    let code = status.code().unwrap_or(128);
    let elapsed = started.elapsed().as_secs();
    let footer = format!(
        "\n# exit code: {code}\n# elapsed time: {:02}:{:02}:{:02}\n{}\n",
        elapsed / 3600,
        elapsed / 60 % 60,
        elapsed % 60,
        "-".repeat(64)
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .map_err(|e| Failure::io(format!("opening {}", log.display()), e))?;
    std::io::Write::write_all(&mut file, footer.as_bytes())
        .map_err(|e| Failure::io(format!("writing {}", log.display()), e))?;
    if code == 0 {
        ctx.say(" done.");
    } else {
        ctx.say(format!("(bad exit status: {code})\nFailed command:\n{command}"));
    }
    Ok(())
}
