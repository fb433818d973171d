//! Storage time (microseconds since the Unix epoch, UTC) to and from protobuf timestamps, and
//! the calendar months monthly quotas count in.

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

/// A calendar month (UTC): the period monthly quotas count in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Month {
    /// `YYYY-MM`, the key usage is stored under.
    pub key: String,
    /// The first instant of the month, in microseconds since the epoch.
    pub start: i64,
    /// The first instant of the next month.
    pub end: i64,
}

const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// The month containing `micros` (microseconds since the epoch, UTC).
pub fn month_at(micros: i64) -> Month {
    let (year, month, _) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    Month {
        key: format!("{year:04}-{month:02}"),
        start: days_from_civil(year, month, 1) * MICROS_PER_DAY,
        end: days_from_civil(next_year, next_month, 1) * MICROS_PER_DAY,
    }
}

// Howard Hinnant's proleptic Gregorian conversions (`days_from_civil` / `civil_from_days`):
// exact for every i64 day count we can meet, and no calendar crate for one month boundary.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

    #[test]
    fn months_are_utc_calendar_months() {
        // 2026-11-21T11:14:06Z
        let month = month_at(1_795_259_646_000_000);
        assert_eq!(month.key, "2026-11");
        assert_eq!(month.start, 1_793_491_200_000_000); // 2026-11-01T00:00:00Z
        assert_eq!(month.end, 1_796_083_200_000_000); // 2026-12-01T00:00:00Z
        let december = month_at(month.end);
        assert_eq!(december.key, "2026-12");
        assert_eq!(month_at(december.end).key, "2027-01");
        // The last microsecond of a month still belongs to it; leap years have a 29 February.
        assert_eq!(month_at(month.end - 1).key, "2026-11");
        let february = month_at(days_from_civil(2028, 2, 10) * MICROS_PER_DAY);
        assert_eq!(february.end - february.start, 29 * MICROS_PER_DAY);
        assert_eq!(month_at(0).key, "1970-01");
        assert_eq!(month_at(-1).key, "1969-12");
    }
}
