//! File descriptors: the process's budget of them, and each listener's share.
//!
//! A long-running wfrun (the daemon, `wfrun fleet serve`) raises its soft
//! limit on open files to the hard limit the system allows at start
//! ([`raise_limit`]), so the distribution's default (often 1,024) does not
//! become the number of idle connections that starves its runs. Every
//! listener then caps its open connections at [`connection_capacity`], a
//! quarter of that limit: the rest is the reserve for runs, the database,
//! logs and the cache.

#[cfg(unix)]
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The soft limit [`raise_limit`] aims for, when the hard limit allows it.
/// Enough for every listener's cap (1,024 each) with a large reserve; higher
/// would only let a flood hold more memory.
pub const TARGET_SOFT_LIMIT: u64 = 65_536;

/// Raises the soft limit on open files towards [`TARGET_SOFT_LIMIT`], within
/// the hard limit; never lowers it. Returns the soft limit in force after,
/// if the system reports one.
pub fn raise_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let limit = getrlimit(Resource::Nofile);
        let soft = limit.current.unwrap_or(u64::MAX);
        let hard = limit.maximum.unwrap_or(u64::MAX);
        let wanted = TARGET_SOFT_LIMIT.min(hard);
        if soft < wanted {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(wanted), maximum: limit.maximum }) {
                Ok(()) => tracing::debug!("open-file limit raised from {soft} to {wanted}"),
                Err(e) => tracing::warn!("could not raise the open-file limit from {soft} to {wanted}: {e}"),
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// How many connections one listener may hold open at once: a quarter of
/// the soft limit on open files, between 16 and 1,024 (256 where the limit
/// is unknown). Past it, a listener closes new connections at once.
pub fn connection_capacity() -> usize {
    #[cfg(unix)]
    let soft = getrlimit(Resource::Nofile).current;
    #[cfg(not(unix))]
    let soft: Option<u64> = None;
    soft.map_or(256, |n| (n / 4).clamp(16, 1024) as usize)
}

/// A listener's cap on open connections: [`Capped::admit`] gives each new
/// connection a permit it holds until it closes, or refuses it when
/// [`connection_capacity`] are open (warning at most once a minute).
#[derive(Debug)]
pub struct Capped {
    what: &'static str,
    capacity: usize,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    last_warning: Option<std::time::Instant>,
}

impl Capped {
    /// A cap for the listener named `what` (in its warnings).
    pub fn new(what: &'static str) -> Capped {
        let capacity = connection_capacity();
        Capped {
            what,
            capacity,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(capacity)),
            last_warning: None,
        }
    }

    /// A permit for one more connection, or `None`: close it at once.
    pub fn admit(&mut self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.permits.clone().try_acquire_owned().ok();
        if permit.is_none() && self.last_warning.is_none_or(|at| at.elapsed() > std::time::Duration::from_secs(60)) {
            tracing::warn!(
                "{} listener: {} connections open; closing new ones until some end",
                self.what,
                self.capacity
            );
            self.last_warning = Some(std::time::Instant::now());
        }
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_raised_never_lowered_and_a_listener_gets_a_quarter_of_it() {
        let before = getrlimit(Resource::Nofile);
        let after = raise_limit().unwrap();
        assert!(after >= before.current.unwrap());
        assert!(after >= TARGET_SOFT_LIMIT.min(before.maximum.unwrap_or(u64::MAX)));
        assert_eq!(getrlimit(Resource::Nofile).maximum, before.maximum, "the hard limit is left alone");
        assert_eq!(connection_capacity() as u64, (after / 4).clamp(16, 1024));
    }
}
