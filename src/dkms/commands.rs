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
    for name in ["CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS"] {
        command.env_remove(name);
    }
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
    run_script_in(ctx, ctx.tree_sandbox(), kind, value, dir)
}

/// [`run_script`], inside the build's sandbox when there is one.
pub fn run_script_in(ctx: &Ctx, sandbox: Option<&Sandbox>, kind: &str, value: &str, dir: &Path) -> bool {
    let mut words = value.split_whitespace();
    let Some(script) = words.next() else { return true };
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
