//! Cooperative interruption of long work (Ctrl-C from the Python API).
//!
//! The `qforge` binary dies on SIGINT like any command-line tool, so it
//! needs nothing here. An embedding program cannot kill its own process:
//! the Python module turns `KeyboardInterrupt` into [`request`], and the
//! loops that take long (the pass manager between passes, calibration
//! between batches of samples, `skip-sensitive` between trials) call
//! [`check`], which ends the run with [`PassError::Interrupted`] within one
//! unit of work. Nothing is written after an interrupted run.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::PassError;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the running pipeline to stop at its next check.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Forgets a request (an embedding program calls it before each run).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// `Err(PassError::Interrupted)` once a stop was requested.
pub fn check() -> Result<(), PassError> {
    if requested() { Err(PassError::Interrupted) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_seen_until_cleared() {
        clear();
        assert!(check().is_ok());
        request();
        assert!(matches!(check(), Err(PassError::Interrupted)));
        assert_eq!(check().unwrap_err().to_string(), "interrupted");
        clear();
        assert!(check().is_ok());
    }
}
