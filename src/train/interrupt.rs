//! Stopping a training run gracefully: SIGINT (Ctrl-C), SIGTERM (a scheduler's stop) and SIGHUP (a
//! closed terminal) ask the loop to finish its step, write a checkpoint and exit with a message
//! saying how to resume; a second signal ends the process at once, as a user pressing Ctrl-C twice
//! expects.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// The signal that asked the run to stop (0: none yet).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Installs the handlers (once per process; later calls do nothing more).
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // Registered first, so it sees the flag before this signal sets it: exits (code 128 + sig)
        // only when a signal already asked for a stop.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
        // SAFETY: the action only stores to an atomic, which is async-signal-safe.
        unsafe {
            signal_hook::low_level::register(sig, move || SIGNAL.store(sig, Ordering::SeqCst))?;
        }
    }
    Ok(())
}

/// Whether a signal asked the run to stop.
pub fn requested() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
}

/// The name of the signal that asked, for messages.
pub fn signal_name() -> &'static str {
    match SIGNAL.load(Ordering::SeqCst) {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The exit status of a process stopped by `signal_name` (128 + its number, as shells report it).
pub fn exit_code() -> i32 {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => 1,
        s => 128 + s,
    }
}
