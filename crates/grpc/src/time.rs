//! Storage time (microseconds since the Unix epoch, UTC) to and from protobuf timestamps.

use prost_types::Timestamp;

pub fn now_micros() -> i64 {
    micros(&std::time::SystemTime::now().into())
}

/// Saturates at the ends of the `i64` range; see [`micros_in_range`] for input from clients.
pub fn micros(timestamp: &Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(timestamp.nanos / 1_000))
}

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the RFC 3339 range.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// Microseconds of a client-supplied timestamp, or `None` outside years 1 to 9999.
pub fn micros_in_range(timestamp: &Timestamp) -> Option<i64> {
    (MIN_SECONDS..=MAX_SECONDS)
        .contains(&timestamp.seconds)
        .then(|| micros(timestamp))
}

pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_timestamps_neither_panic_nor_pass() {
        let far = Timestamp {
            seconds: 9_000_000_000_000_000,
            nanos: 500_000_000,
        };
        assert_eq!(micros(&far), i64::MAX);
        assert_eq!(micros_in_range(&far), None);
        assert_eq!(
            micros_in_range(&Timestamp {
                seconds: 0,
                nanos: 0
            }),
            Some(0)
        );
    }

    #[test]
    fn round_trips_including_before_the_epoch() {
        for value in [0, 1, 1_700_000_000_123_456, -1, -1_500_000] {
            assert_eq!(micros(&timestamp(value)), value);
        }
    }
}
