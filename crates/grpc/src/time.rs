//! Storage time (microseconds since the Unix epoch, UTC) to and from protobuf timestamps.

use prost_types::Timestamp;

pub fn now_micros() -> i64 {
    micros(&std::time::SystemTime::now().into())
}

pub fn micros(timestamp: &Timestamp) -> i64 {
    timestamp.seconds.saturating_mul(1_000_000) + i64::from(timestamp.nanos / 1_000)
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
    fn round_trips_including_before_the_epoch() {
        for value in [0, 1, 1_700_000_000_123_456, -1, -1_500_000] {
            assert_eq!(micros(&timestamp(value)), value);
        }
    }
}
