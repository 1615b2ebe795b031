//! Sizes and durations as people write them, parsed in one place.
//!
//! Every size (`64MiB`, `512KiB`, `1048576`) and every duration (`2s`,
//! `500ms`, `1m`) that wfrun reads, from a flag, a config file, a job or a
//! workflow definition, goes through [`size`] or [`duration`], with the range
//! it must fall in. A [`UnitError`] names the value and says what was
//! expected; the caller adds where the value came from. This module imports
//! nothing of the crate.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Why a size or duration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a size at all.
    #[error("{value:?} is not a size like 64MiB, 512KiB or 1048576: {reason}")]
    NotASize {
        /// The text as given.
        value: String,
        /// The parser's explanation.
        reason: String,
    },
    /// Not a duration at all.
    #[error("{value:?} is not a duration like 2s, 500ms or 1m: {reason}")]
    NotADuration {
        /// The text as given.
        value: String,
        /// The parser's explanation.
        reason: String,
    },
    /// A size or duration outside its range.
    #[error("{value:?} is outside {min}..={max}")]
    OutOfRange {
        /// The text as given.
        value: String,
        /// The smallest allowed value, as text.
        min: String,
        /// The largest allowed value, as text.
        max: String,
    },
}

/// Parses a size in bytes (`64MiB`, `1KB`, `1048576`) that must lie in `range`.
pub fn size(text: &str, range: RangeInclusive<u64>) -> Result<u64, UnitError> {
    let bytes = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .map_err(|reason| UnitError::NotASize { value: text.to_owned(), reason })?;
    if !range.contains(&bytes) {
        return Err(UnitError::OutOfRange {
            value: text.to_owned(),
            min: format_size(*range.start()),
            max: format_size(*range.end()),
        });
    }
    Ok(bytes)
}

/// Parses a duration (`2s`, `500ms`, `1h 30m`) that must lie in `range`.
pub fn duration(text: &str, range: RangeInclusive<Duration>) -> Result<Duration, UnitError> {
    let value = humantime::parse_duration(text.trim())
        .map_err(|e| UnitError::NotADuration { value: text.to_owned(), reason: e.to_string() })?;
    if !range.contains(&value) {
        return Err(UnitError::OutOfRange {
            value: text.to_owned(),
            min: humantime::format_duration(*range.start()).to_string(),
            max: humantime::format_duration(*range.end()).to_string(),
        });
    }
    Ok(value)
}

/// A size as a person would write it: `64MiB`, `512KiB`, `100B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Any size at all.
pub const ANY_SIZE: RangeInclusive<u64> = 0..=u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units_and_are_range_checked() {
        assert_eq!(size("64MiB", ANY_SIZE).unwrap(), 64 * 1024 * 1024);
        assert_eq!(size("512KiB", ANY_SIZE).unwrap(), 512 * 1024);
        assert_eq!(size("1000", ANY_SIZE).unwrap(), 1000);
        assert!(matches!(size("lots", ANY_SIZE), Err(UnitError::NotASize { .. })));
        assert!(matches!(size("1KiB", 2048..=4096), Err(UnitError::OutOfRange { .. })));
    }

    #[test]
    fn durations_are_range_checked() {
        let range = Duration::from_millis(1)..=Duration::from_secs(7 * 24 * 3600);
        assert_eq!(duration("500ms", range.clone()).unwrap(), Duration::from_millis(500));
        assert!(matches!(duration("0s", range.clone()), Err(UnitError::OutOfRange { .. })));
        assert!(matches!(duration("8days", range.clone()), Err(UnitError::OutOfRange { .. })));
        assert!(matches!(duration("soon", range), Err(UnitError::NotADuration { .. })));
    }

    #[test]
    fn sizes_format_in_the_largest_whole_unit() {
        assert_eq!(format_size(64 * 1024 * 1024), "64MiB");
        assert_eq!(format_size(1536), "1536B");
        assert_eq!(format_size(64 * 1024), "64KiB");
    }
}
