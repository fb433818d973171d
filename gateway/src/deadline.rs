//! Call deadlines at the edge. A unary call gets the client's `grpc-timeout`, or the gateway's
//! default when the client sent none, so that no unary call holds a connection and a backend's
//! work forever. Streaming calls keep only the client's deadline: they last as long as the
//! client keeps them open.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use palisade_grpc::ApiError;

pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The client's deadline from `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit
/// `H`, `M`, `S`, `m`, `u` or `n`), `None` when absent. A malformed one is refused rather than
/// ignored (as grpc-gateway refuses it): the client asked for a deadline and would not get it.
pub fn client_deadline(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(value) = headers.get(GRPC_TIMEOUT) else {
        return Ok(None);
    };
    parse(value.as_bytes()).map(Some).ok_or_else(|| {
        let shown = String::from_utf8_lossy(value.as_bytes());
        let shown: String = shown.chars().take(32).collect();
        ApiError::invalid(
            GRPC_TIMEOUT,
            format!(
                "malformed grpc-timeout {shown:?}: at most 8 digits and a unit (H, M, S, m, u or n), e.g. `10S`"
            ),
        )
    })
}

fn parse(raw: &[u8]) -> Option<Duration> {
    let (unit, digits) = raw.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(value * 3600),
        b'M' => Duration::from_secs(value * 60),
        b'S' => Duration::from_secs(value),
        b'm' => Duration::from_millis(value),
        b'u' => Duration::from_micros(value),
        b'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

/// What is left at `now` of a `budget` counted from `arrived`; `None` when nothing is.
pub fn left(budget: Duration, arrived: Instant, now: Instant) -> Option<Duration> {
    budget
        .checked_sub(now.saturating_duration_since(arrived))
        .filter(|left| !left.is_zero())
}

/// `deadline` as a `grpc-timeout` value, in the finest unit that fits in 8 digits (rounded up,
/// so the backend never gets less time than the gateway allows).
pub fn header_value(deadline: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let units: [(u128, &str); 5] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
    ];
    let nanos = deadline.as_nanos();
    let (value, unit) = units
        .iter()
        .map(|(per, unit)| (nanos.div_ceil(*per), *unit))
        .find(|(value, _)| *value <= MAX)
        .unwrap_or((nanos.div_ceil(3_600_000_000_000).min(MAX), "H"));
    HeaderValue::from_str(&format!("{value}{unit}")).expect("digits and a letter")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &'static str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static(raw));
        client_deadline(&headers).ok()?
    }

    #[test]
    fn reads_every_unit_and_refuses_the_malformed() {
        assert_eq!(parsed("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parsed("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parsed("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parsed("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parsed("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parsed("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [
            "",
            "S",
            "10",
            "10s",
            "123456789S",
            "-1S",
            "1.5S",
            "1 S",
            "abc",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_TIMEOUT, HeaderValue::from_static(bad));
            match client_deadline(&headers) {
                Err(ApiError::InvalidArgument(violations)) => {
                    assert_eq!(violations[0].field, GRPC_TIMEOUT, "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert_eq!(client_deadline(&HeaderMap::new()).ok(), Some(None));
    }

    #[test]
    fn time_spent_comes_out_of_the_budget() {
        let arrived = Instant::now();
        let budget = Duration::from_millis(100);
        let at = |ms| arrived + Duration::from_millis(ms);
        assert_eq!(left(budget, arrived, at(0)), Some(budget));
        assert_eq!(
            left(budget, arrived, at(30)),
            Some(Duration::from_millis(70))
        );
        assert_eq!(left(budget, arrived, at(100)), None);
        assert_eq!(left(budget, arrived, at(250)), None);
    }

    #[test]
    fn writes_what_it_reads_never_shorter() {
        for deadline in [
            Duration::from_nanos(1),
            Duration::from_millis(1500),
            Duration::from_secs(60),
            Duration::from_secs(400_000),
            Duration::from_nanos(100_000_001),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_TIMEOUT, header_value(deadline));
            let back = client_deadline(&headers).ok().flatten().expect("parses");
            assert!(back >= deadline, "{deadline:?} became {back:?}");
            assert!(back - deadline < deadline / 1000 + Duration::from_nanos(1));
        }
        assert_eq!(header_value(Duration::from_secs(60)), "60000000u");
    }
}
