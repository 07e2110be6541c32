//! Progress of a run's builds: a line when each starts and ends (how, and how long it took)
//! and a summary at the end (built, from the cache, failed, skipped by BUILD_EXCLUSIVE), on
//! stderr. Shown when the run has a build cache or --verbose (and not -q): a plain run prints
//! what dkms prints, nothing more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::{Ctx, Failure, Target};
use crate::exit::Exit;

/// How one build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Built,
    Restored,
    Failed,
    Excluded,
}

/// The builds of one run, counted.
pub struct Tally {
    shown: bool,
    total: usize,
    started: Instant,
    finished: AtomicUsize,
    outcomes: Mutex<Vec<Outcome>>,
}

impl Tally {
    /// A tally of `total` builds.
    pub fn new(ctx: &Ctx, total: usize) -> Tally {
        Tally {
            shown: !ctx.quiet && (ctx.cache.is_some() || ctx.verbose),
            total,
            started: Instant::now(),
            finished: AtomicUsize::new(0),
            outcomes: Mutex::new(Vec::new()),
        }
    }

    /// A build starts: its line, and the moment it started.
    pub fn start(&self, module: &str, version: &str, target: &Target) -> Instant {
        if self.shown {
            super::print_err(format_args!("xdkms: {}: started", name(module, version, target)));
        }
        Instant::now()
    }

    /// A build ended with `result`: its line.
    pub fn finish(
        &self,
        ctx: &Ctx,
        module: &str,
        version: &str,
        target: &Target,
        started: Instant,
        result: &Result<(), Failure>,
    ) {
        let outcome = match result {
            Ok(()) if ctx.was_restored(module, version, target) => Outcome::Restored,
            Ok(()) => Outcome::Built,
            Err(failure) if failure.code == Exit::Excluded => Outcome::Excluded,
            Err(_) => Outcome::Failed,
        };
        self.outcomes.lock().unwrap_or_else(|e| e.into_inner()).push(outcome);
        let done = self.finished.fetch_add(1, Ordering::AcqRel) + 1;
        if !self.shown {
            return;
        }
        let how = match (outcome, result) {
            (Outcome::Built, _) => "built".to_string(),
            (Outcome::Restored, _) => "restored from the build cache".to_string(),
            (Outcome::Excluded, _) => "skipped (BUILD_EXCLUSIVE)".to_string(),
            (Outcome::Failed, Err(failure)) => format!("failed (exit {})", failure.code.code()),
            (Outcome::Failed, Ok(())) => "failed".to_string(),
        };
        super::print_err(format_args!(
            "xdkms: [{done}/{}] {}: {how} in {:.1} s",
            self.total,
            name(module, version, target),
            started.elapsed().as_secs_f64()
        ));
    }

    /// The summary line, when there were builds.
    pub fn summary(&self) {
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        if !self.shown || outcomes.is_empty() {
            return;
        }
        let count = |wanted: Outcome| outcomes.iter().filter(|&&o| o == wanted).count();
        let builds = if outcomes.len() == 1 { "build" } else { "builds" };
        super::print_err(format_args!(
            "xdkms: {} {builds} in {:.1} s: {} built, {} from the build cache, {} failed, {} skipped by BUILD_EXCLUSIVE",
            outcomes.len(),
            self.started.elapsed().as_secs_f64(),
            count(Outcome::Built),
            count(Outcome::Restored),
            count(Outcome::Failed),
            count(Outcome::Excluded)
        ));
    }
}

fn name(module: &str, version: &str, target: &Target) -> String {
    format!("{module}/{version} for {} ({})", target.kernel, target.arch)
}
