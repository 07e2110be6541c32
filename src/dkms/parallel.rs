//! build and install over several modules and kernels: every (module, kernel) pair builds at the
//! same time in its own staging directory, and all of their makes share one GNU make jobserver
//! of `-j N` tokens, so the whole run never runs more than N jobs (dkms builds one pair after
//! another, each with its own `-j N`); a module another builds after starts first and is
//! installed when built. Installs then run in order, and each kernel's indexes are regenerated
//! once at the end of the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use super::tally::Tally;
use super::{build, install, report, tree, Ctx, Failure, Result, Target};

/// The jobserver of the make that started this process (a Yocto or Buildroot recipe run under
/// `make -jN`), adopted once at startup.
static PARENT_JOBSERVER: OnceLock<Option<jobserver::Client>> = OnceLock::new();

/// Adopts the parent make's jobserver named in MAKEFLAGS, if any. Must run before the process
/// opens any file.
#[allow(unsafe_code)]
pub fn adopt_parent_jobserver() {
    PARENT_JOBSERVER.get_or_init(|| {
        let named = std::env::var("MAKEFLAGS").is_ok_and(|flags| flags.contains("--jobserver-"));
        if !named {
            return None;
        }
        // SAFETY: called first thing in main, before any file is opened, so the descriptors
        // MAKEFLAGS names are the ones the parent make passed down and nothing else owns them;
        // check_pipe makes the crate verify they are a pipe (or the named fifo) before use. A
        // make that did not pass them (a recipe line without `+`) leaves them closed: then
        // the check fails and the run makes its own jobserver.
        let found = unsafe { jobserver::Client::from_env_ext(true) };
        found.client.ok()
    });
}

/// The parent make's jobserver, when [`adopt_parent_jobserver`] found one.
pub fn parent_jobserver() -> Option<jobserver::Client> {
    PARENT_JOBSERVER.get().and_then(|c| c.clone())
}

/// One (module, version, kernel) of the run.
struct Pair<'a> {
    module: &'a str,
    version: &'a str,
    target: &'a Target,
}

/// Threads waiting for a parent make's tokens at most.
const MAX_WORKERS: usize = 64;

/// The builds of a run, handed to the workers: each pair once the pairs it builds after have
/// ended.
struct Schedule {
    /// Pairs left to build, largest source first.
    queue: Vec<usize>,
    /// Pairs whose build (and install, for those others build after) has ended.
    ended: Vec<bool>,
    running: usize,
}

/// For each pair, the pairs of the run (same kernel and arch) it builds after: the modules its
/// BUILD_DEPENDS or MAKE line names (see [`super::depends::builds_after`]).
fn dependencies(ctx: &Ctx, pairs: &[Pair], modules: &[(String, String)]) -> Vec<Vec<usize>> {
    pairs
        .iter()
        .map(|pair| {
            let Ok(conf) = ctx.module_conf_quietly(pair.module, pair.version, pair.target) else {
                // Its build reports the conf's error.
                return Vec::new();
            };
            let after = super::depends::builds_after(ctx, pair.module, &conf, modules);
            (0..pairs.len())
                .filter(|&j| pairs[j].target == pair.target)
                .filter(|&j| after.iter().any(|(m, v)| m == pairs[j].module && v == pairs[j].version))
                .collect()
        })
        .collect()
}

impl Schedule {
    /// The next pair to build: the first queued one whose dependencies have ended, waiting for
    /// running builds until there is one. When none can start and none runs (dependencies
    /// that loop), the first queued pair goes anyway: its build fails as dkms's would.
    fn next(schedule: &Mutex<Schedule>, changed: &Condvar, waits: &[Vec<usize>]) -> Option<usize> {
        let mut state = schedule.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.queue.is_empty() {
                return None;
            }
            let ready = state.queue.iter().position(|&i| waits[i].iter().all(|&d| state.ended[d]));
            if let Some(at) = ready.or((state.running == 0).then_some(0)) {
                state.running += 1;
                return Some(state.queue.remove(at));
            }
            state = changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn end(schedule: &Mutex<Schedule>, changed: &Condvar, index: usize) {
        let mut state = schedule.lock().unwrap_or_else(|e| e.into_inner());
        state.ended[index] = true;
        state.running -= 1;
        changed.notify_all();
    }
}

/// Builds (and with `install`, installs) every module for every target. A module another of
/// the run builds after (BUILD_DEPENDS, or its tree named in a MAKE line) is built, and
/// installed, before it. Each failure is printed when it happens; the status returned is that
/// of the last failing pair, as dkms reports the last kernel's.
pub fn build_and_install(ctx: &Ctx, install: bool, modules: &[(String, String)], targets: &[Target]) -> Result<()> {
    let pairs: Vec<Pair> = modules
        .iter()
        .flat_map(|(module, version)| targets.iter().map(move |target| Pair { module, version, target }))
        .collect();
    let waits = dependencies(ctx, &pairs, modules);
    // What another pair builds after is installed as soon as it is built (it reads the
    // installed module's Module.symvers).
    let install_early: Vec<bool> = (0..pairs.len()).map(|i| install && waits.iter().any(|w| w.contains(&i))).collect();
    let installed: Vec<Mutex<Option<Result<()>>>> = pairs.iter().map(|_| Mutex::new(None)).collect();
    let install_lock = Mutex::new(());
    let install_now = |index: usize| {
        let pair = &pairs[index];
        let _one_at_a_time = install_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = install::maybe_install(ctx, pair.module, pair.version, pair.target);
        if let Err(failure) = &result {
            report(ctx, failure);
        }
        *installed[index].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    };
    // install builds only what is not built (--force reinstalls, it does not rebuild).
    let needs_build = |p: &Pair| !install || !tree::is_built(ctx, p.module, p.version, p.target);
    let mut ended = vec![true; pairs.len()];
    for (index, pair) in pairs.iter().enumerate() {
        if needs_build(pair) {
            ended[index] = false;
        } else if install_early[index] {
            install_now(index);
        }
    }
    // Largest sources first, so that the longest build does not start last and run alone.
    let mut queue: Vec<usize> = (0..pairs.len()).filter(|&i| !ended[i]).collect();
    let sizes: Vec<u64> = pairs
        .iter()
        .map(|p| ctx.source_dir(p.module, p.version).map_or(0, |dir| crate::fsio::tree_bytes(&dir)))
        .collect();
    queue.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let count = queue.len();
    let tally = Tally::new(ctx, count);
    let schedule = Mutex::new(Schedule { queue, ended, running: 0 });
    let changed = Condvar::new();
    let results: Mutex<Vec<Option<Result<()>>>> = Mutex::new(pairs.iter().map(|_| None).collect());
    // Under a parent make the limit is its jobserver's; the tokens decide how many run.
    let limit = if ctx.jobserver_inherited { MAX_WORKERS } else { ctx.jobs.parse::<usize>().unwrap_or(1) };
    let workers = limit.clamp(1, pairs.len().max(1));
    if ctx.verbose {
        say_how_builds_share_jobs(ctx, count);
    }
    // A process started by make holds one job slot without a token: one build uses it.
    let implicit_free = AtomicBool::new(ctx.jobserver_inherited);
    ctx.sole_build.store(workers == 1, Ordering::Relaxed);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(index) = Schedule::next(&schedule, &changed, &waits) {
                    let pair = &pairs[index];
                    // The token is this build's own job; its make takes more from the jobserver.
                    let implicit = implicit_free.swap(false, Ordering::AcqRel);
                    let token = if implicit { None } else { ctx.jobserver.as_ref().map(|j| j.acquire()) };
                    let started = tally.start(pair.module, pair.version, pair.target);
                    let result = if install {
                        build::build_if_missing(ctx, pair.module, pair.version, pair.target)
                    } else {
                        build::maybe_build(ctx, pair.module, pair.version, pair.target)
                    };
                    tally.finish(ctx, pair.module, pair.version, pair.target, started, &result);
                    drop(token);
                    if implicit {
                        implicit_free.store(true, Ordering::Release);
                    }
                    match &result {
                        Err(failure) => report(ctx, failure),
                        Ok(()) if install_early[index] => install_now(index),
                        Ok(()) => {}
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(result);
                    Schedule::end(&schedule, &changed, index);
                }
            });
        }
    });
    ctx.sole_build.store(true, Ordering::Relaxed);
    tally.summary();
    let build_results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let installed_early = installed.into_iter().map(|slot| slot.into_inner().unwrap_or_else(|e| e.into_inner()));
    install_in_order(ctx, install, &pairs, build_results, installed_early)
}

/// --verbose: how the run's builds share make jobs.
fn say_how_builds_share_jobs(ctx: &Ctx, count: usize) {
    match (&ctx.jobserver, ctx.jobserver_inherited) {
        (Some(_), true) => super::print_err(format_args!("xdkms: {count} builds share the parent make's jobserver")),
        (Some(_), false) => {
            super::print_err(format_args!("xdkms: {count} builds share a jobserver of -j {}", ctx.jobs))
        }
        (None, _) => super::print_err(format_args!("xdkms: {count} builds, one at a time")),
    }
}

/// After the builds: each pair built and not installed yet is installed, in the run's order.
/// The status is that of the last pair that failed (its lines were printed when it did).
fn install_in_order(
    ctx: &Ctx,
    install: bool,
    pairs: &[Pair],
    build_results: Vec<Option<Result<()>>>,
    installed_early: impl Iterator<Item = Option<Result<()>>>,
) -> Result<()> {
    let mut last: Result<()> = Ok(());
    for ((pair, built), done_early) in pairs.iter().zip(build_results).zip(installed_early) {
        let result = match (built, done_early) {
            (Some(Err(failure)), _) => Err(failure),
            // Reported when it ran.
            (_, Some(result)) => result,
            _ if install => {
                let result = install::maybe_install(ctx, pair.module, pair.version, pair.target);
                if let Err(failure) = &result {
                    report(ctx, failure);
                }
                result
            }
            _ => Ok(()),
        };
        if let Err(failure) = result {
            last = Err(Failure { code: failure.code, lines: Vec::new() });
        }
    }
    last
}
