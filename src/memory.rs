//! Gives memory freed after a burst back to the system.
//!
//! glibc's allocator keeps what a burst freed (a full queue of clients that
//! each sent 64 KiB, a flood of idle HTTP clients) in its per-thread arenas,
//! where fragmentation keeps it from ever shrinking on its own: measured,
//! 10.6 MiB at start, 100 MiB during a burst and still 100 MiB a minute
//! after it, 150 MiB after a second one. `malloc_trim` returns those pages
//! (back to 12 MiB). jemalloc with a background purge thread returned them
//! too, but it changes the allocator of the data path, whose figures are
//! measured against HAProxy; a trim every few seconds leaves the data path
//! as it is. mimalloc kept everything.

use std::time::Duration;

use log::{debug, warn};

/// How often freed memory is handed back: a container's memory limit
/// cares about minutes, not milliseconds.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Starts a thread that returns freed heap pages to the system every
/// `TRIM_EVERY`. A no-op where the C library has no `malloc_trim`.
pub fn trim_periodically() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("trim".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_EVERY);
            let started = std::time::Instant::now();
            if trim() {
                debug!("returned freed heap memory in {:?}", started.elapsed());
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the memory trim thread ({e}); memory freed after bursts stays with the process");
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's
    // own free lists under its locks; any thread may call it at any time.
    #[allow(unsafe_code)]
    let released = unsafe { nix::libc::malloc_trim(0) };
    released == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
