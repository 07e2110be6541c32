//! Progress of long steps on stderr: on a terminal, one line redrawn every second once a step
//! has run a second (what it does, how long so far), erased when it ends; elsewhere (a build
//! log) one plain line when a step that took a second or more ends. `XDKMS_PROGRESS_AFTER`
//! (seconds) sets that second: 0 shows every step.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Steps shorter than this show nothing, unless XDKMS_PROGRESS_AFTER says otherwise.
const QUIET_FOR: Duration = Duration::from_secs(1);

fn quiet_for() -> Duration {
    std::env::var("XDKMS_PROGRESS_AFTER")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(QUIET_FOR)
}
/// How often the terminal line is redrawn, and how often the drawing thread looks for the end.
const REDRAW: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

/// A step under way; its end is when it is dropped.
pub struct Step {
    /// What the step does, as the line says it (`writing rootfs.squashfs`).
    what: String,
    started: Instant,
    quiet_for: Duration,
    /// On a terminal: tells the drawing thread to stop; the thread, which says whether it drew.
    drawing: Option<(Arc<AtomicBool>, std::thread::JoinHandle<bool>)>,
}

/// Starts a step that does `what`.
pub fn step(what: String) -> Step {
    let (started, quiet_for) = (Instant::now(), quiet_for());
    let drawing = std::io::stderr().is_terminal().then(|| {
        let done = Arc::new(AtomicBool::new(false));
        let (flag, line) = (Arc::clone(&done), what.clone());
        (done, std::thread::spawn(move || draw(&line, started + quiet_for, &flag)))
    });
    Step { what, started, quiet_for, drawing }
}

/// Draws `xdkms: WHAT (N s)` every second from `first` until `done`; whether it drew.
fn draw(what: &str, first: Instant, done: &AtomicBool) -> bool {
    let started = Instant::now();
    let mut next = first;
    let mut drew = false;
    loop {
        // Due time is looked at before the end: a step due at once is drawn at least once.
        if Instant::now() >= next {
            let mut err = std::io::stderr().lock();
            // A terminal that cannot be written to has no progress to show.
            let _ = write!(err, "\r\x1b[Kxdkms: {what} ({} s)", started.elapsed().as_secs());
            let _ = err.flush();
            drew = true;
            next += REDRAW;
        }
        if done.load(Ordering::Relaxed) {
            return drew;
        }
        std::thread::sleep(POLL);
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        match self.drawing.take() {
            Some((done, thread)) => {
                done.store(true, Ordering::Relaxed);
                if thread.join().unwrap_or(false) {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[K");
                    let _ = err.flush();
                }
            }
            None if took >= self.quiet_for => eprintln!("xdkms: {} took {:.1} s", self.what, took.as_secs_f64()),
            None => {}
        }
    }
}
