//! How long to wait before trying the receiver again: exponential backoff
//! with full jitter, or the receiver's `Retry-After` (seconds or an HTTP
//! date), clamped.

use std::time::{Duration, SystemTime};

/// The wait before retry number `failures` (1 for the first retry): a
/// uniformly random time in `[0, min(max, min_delay × 2^(failures-1))]`.
pub fn full_jitter(failures: u32, min_delay: Duration, max: Duration) -> Duration {
    let ceiling = min_delay.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(max);
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    ceiling.mul_f64(u64::from_le_bytes(random) as f64 / u64::MAX as f64)
}

/// A `Retry-After` value: delay-seconds or an HTTP date, as a wait from
/// `now`, at most `max`. `None` for anything else.
pub fn retry_after(value: &str, now: SystemTime, max: Duration) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(wait.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates_and_is_clamped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let max = Duration::from_secs(3600);
        assert_eq!(retry_after("7", now, max), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(retry_after(&date, now, max), Some(Duration::from_secs(90)));
        assert_eq!(retry_after("99999999999", now, max), Some(max), "an absurd value is clamped");
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(retry_after(&past, now, max), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now, max), None);
    }

    #[test]
    fn jitter_stays_under_a_doubling_ceiling() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for failures in 1..40 {
            let ceiling = (min * 2u32.saturating_pow(failures - 1).min(1 << 20)).min(max);
            assert!(full_jitter(failures, min, max) <= ceiling);
        }
        let waits: Vec<Duration> = (0..50).map(|_| full_jitter(10, min, max)).collect();
        assert!(waits.iter().any(|w| *w != waits[0]), "the waits are spread, not all the same");
    }
}
