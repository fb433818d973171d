//! The one mapping from errors to `tonic::Status`, with `google.rpc` details (AIP-193):
//! `BadRequest` field violations for bad input, `ErrorInfo` with a stable reason for the rest.
//! Services convert their own errors into [`ApiError`]; nothing else builds a `Status` by hand.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Palisade error.
pub const ERROR_DOMAIN: &str = "palisade.dev";

/// Client text echoed in an error message, cut to its first 64 characters (and `…`): a huge
/// value would otherwise come back whole in the status message and again in its details, which
/// travel as HTTP/2 trailers a proxy may refuse.
pub fn echoed(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// One bad field of a request: its path (`tenant.display_name`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// What went wrong, in the vocabulary of gRPC status codes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{resource} not found")]
    NotFound { resource: String },
    #[error("{resource} already exists")]
    AlreadyExists { resource: String },
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    /// A concurrent change got in the way; retrying the whole call may succeed.
    #[error("{message}")]
    Aborted {
        reason: &'static str,
        message: String,
    },
    /// A rate or quota is used up: `subject` (e.g. `tenants/acme`) has exceeded the limit
    /// `description` names. Carries `QuotaFailure` and, when waiting helps, `RetryInfo`.
    #[error("{message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
        subject: String,
        description: String,
        retry_after: Option<std::time::Duration>,
    },
    #[error("{message}")]
    Unavailable { message: String },
    #[error("{message}")]
    DeadlineExceeded { message: String },
    #[error("{message}")]
    Unimplemented { message: String },
    /// Logged in full where it is mapped; the caller sees only that it happened.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<palisade_db::Error> for ApiError {
    fn from(error: palisade_db::Error) -> ApiError {
        ApiError::from_database(error, None)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        ApiError::from_database(error, None)
    }
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> ApiError {
        ApiError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(error.to_string())
    }

    /// A store's query failed: `UNAVAILABLE` when the database was only busy (a lock wait
    /// ran out, a deadlock or serialization failure chose this transaction; a retry may
    /// succeed), otherwise internal, its message prefixed with `store`.
    pub fn from_store(store: &str, error: impl std::fmt::Display + 'static) -> ApiError {
        ApiError::from_database(error, Some(store))
    }

    /// The one place a database error (a `sqlx::Error` or `palisade_db::Error`; anything
    /// else is internal) becomes an API error, its internal message prefixed with `store`.
    fn from_database(error: impl std::fmt::Display + 'static, store: Option<&str>) -> ApiError {
        let error_any = &error as &dyn std::any::Any;
        let busy = error_any
            .downcast_ref::<sqlx::Error>()
            .is_some_and(palisade_db::is_transient)
            || error_any
                .downcast_ref::<palisade_db::Error>()
                .is_some_and(palisade_db::Error::is_transient);
        if busy {
            tracing::warn!(%error, "database busy");
            return ApiError::Unavailable {
                message: "the database is busy; retry shortly".to_owned(),
            };
        }
        match store {
            Some(store) => ApiError::Internal(format!("{store}: {error}")),
            None => ApiError::internal(error),
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        match error {
            ApiError::InvalidArgument(violations) => {
                let count = violations.len();
                let message = format!("invalid argument: {}", describe(&violations));
                let mut details = ErrorDetails::with_bad_request(carried(violations));
                let metadata = HashMap::from([("violations".to_owned(), count.to_string())]);
                details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, metadata);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::NotFound { resource } => with_info(
                Code::NotFound,
                format!("{resource} not found"),
                "NOT_FOUND",
                [("resource".to_owned(), resource)],
            ),
            ApiError::AlreadyExists { resource } => with_info(
                Code::AlreadyExists,
                format!("{resource} already exists"),
                "ALREADY_EXISTS",
                [("resource".to_owned(), resource)],
            ),
            ApiError::Unauthenticated { reason, message } => {
                with_info(Code::Unauthenticated, message, reason, [])
            }
            ApiError::PermissionDenied { reason, message } => {
                with_info(Code::PermissionDenied, message, reason, [])
            }
            ApiError::Aborted { reason, message } => with_info(Code::Aborted, message, reason, []),
            ApiError::FailedPrecondition { reason, message } => {
                with_info(Code::FailedPrecondition, message, reason, [])
            }
            ApiError::ResourceExhausted {
                reason,
                message,
                subject,
                description,
                retry_after,
            } => {
                let mut details = ErrorDetails::with_error_info(
                    reason,
                    ERROR_DOMAIN,
                    HashMap::from([("subject".to_owned(), subject.clone())]),
                );
                details.set_quota_failure(vec![tonic_types::QuotaViolation::new(
                    subject,
                    description,
                )]);
                if let Some(delay) = retry_after {
                    details.set_retry_info(Some(delay));
                }
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            ApiError::Unimplemented { message } => {
                with_info(Code::Unimplemented, message, "UNIMPLEMENTED", [])
            }
            ApiError::Unavailable { message } => {
                with_info(Code::Unavailable, message, "UNAVAILABLE", [])
            }
            ApiError::DeadlineExceeded { message } => {
                with_info(Code::DeadlineExceeded, message, "DEADLINE_EXCEEDED", [])
            }
            ApiError::Internal(detail) => {
                // Never leak SQL or internals to the caller; the log keeps the detail.
                tracing::error!(error = %detail, "internal error");
                with_info(Code::Internal, "internal error".to_owned(), "INTERNAL", [])
            }
        }
    }
}

fn with_info<const N: usize>(
    code: Code,
    message: String,
    reason: &'static str,
    metadata: [(String, String); N],
) -> Status {
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::from(metadata));
    Status::with_error_details(code, message, details)
}

/// Bad input's error stays small, whatever the input: its text travels twice in the trailers
/// (`grpc-message`, percent-encoded, and inside `grpc-status-details-bin`, in base64), and
/// trailers past what an HTTP/2 peer takes (16 KiB of headers by default in hyper) reach the
/// caller as a broken connection instead of INVALID_ARGUMENT; the audit relay would retry such
/// a batch forever rather than set it aside. So the details carry the violations while their
/// text fits [`DETAILS_BUDGET`] bytes (at least one), the message names those that fit
/// [`MESSAGE_BUDGET`], each field and description is cut to [`VIOLATION_TEXT`] bytes, and
/// `ErrorInfo.metadata["violations"]` holds the total.
const DETAILS_BUDGET: usize = 4 * 1024;
const MESSAGE_BUDGET: usize = 1024;
const VIOLATION_TEXT: usize = 256;
/// What a `FieldViolation` costs in the details besides its text: its own tag and length, and
/// those of its two strings (each at most 3 bytes for texts of at most [`VIOLATION_TEXT`]).
const VIOLATION_FRAMING: usize = 9;

/// The violations the details carry, each cut to size.
fn carried(violations: Vec<FieldViolation>) -> Vec<tonic_types::FieldViolation> {
    let mut spent = 0;
    (violations.into_iter().enumerate())
        .map(|(index, v)| {
            let field = cut(&v.field, VIOLATION_TEXT);
            (index, field, cut(&v.description, VIOLATION_TEXT))
        })
        .take_while(|(index, field, description)| {
            spent += field.len() + description.len() + VIOLATION_FRAMING;
            *index == 0 || spent <= DETAILS_BUDGET
        })
        .map(|(_, field, description)| tonic_types::FieldViolation::new(field, description))
        .collect()
}

/// The message's list: the violations that fit, and how many more there are.
fn describe(violations: &[FieldViolation]) -> String {
    let mut described = String::new();
    let mut named = 0;
    for v in violations {
        let text = format!(
            "{}: {}",
            cut(&v.field, VIOLATION_TEXT),
            cut(&v.description, VIOLATION_TEXT)
        );
        if named > 0 && described.len() + text.len() > MESSAGE_BUDGET {
            break;
        }
        if named > 0 {
            described.push_str("; ");
        }
        described.push_str(&text);
        named += 1;
    }
    if named < violations.len() {
        described.push_str(&format!("; and {} more", violations.len() - named));
    }
    described
}

/// `text`, cut to at most `max` bytes (and `…`) at a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_text_is_cut_at_64_characters() {
        assert_eq!(echoed("ghost-role"), "ghost-role");
        let long = "é".repeat(64);
        assert_eq!(echoed(&long), long);
        assert_eq!(echoed(&format!("{long}x")), format!("{long}…"));
    }

    #[test]
    fn bad_input_carries_field_violations_and_reason() {
        let status = Status::from(ApiError::invalid(
            "tenant.display_name",
            "must not be empty",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "tenant.display_name");
        assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");
    }

    #[test]
    fn a_thousand_violations_are_counted_not_all_carried() {
        // The longest descriptions the services write: an unknown permission echoed (64
        // characters, here of 2 bytes each) and the catalogue's hint after it.
        let description = format!(
            "unknown permission {:?}; a role grants permissions of the catalogue, e.g. \
             identity.users.list (see ListPermissions)",
            echoed(&"é".repeat(100))
        );
        let violations = (0..1000)
            .map(|i| FieldViolation::new(format!("role.permissions[{i}]"), description.clone()))
            .collect();
        let status = Status::from(ApiError::InvalidArgument(violations));
        let details = status.get_error_details();
        let carried = &details.bad_request().unwrap().field_violations;
        assert!((10..1000).contains(&carried.len()), "{}", carried.len());
        assert_eq!(carried[9].field, "role.permissions[9]");
        let info = details.error_info().unwrap();
        assert_eq!(
            info.metadata.get("violations").map(String::as_str),
            Some("1000")
        );
        assert!(status.message().contains("more"), "{}", status.message());
        // Well within a peer's 16 KiB of headers: the message percent-encoded (non-ASCII at
        // 3 bytes a byte), the details (holding the message again) in base64.
        let size = status.message().len() * 3 + status.details().len() * 4 / 3;
        assert!(size < 12 * 1024, "{size} bytes of trailers");
    }

    #[test]
    fn many_tiny_violations_are_counted_with_their_framing() {
        for text in ["", "x"] {
            let violations = (0..100_000)
                .map(|_| FieldViolation::new(text, text))
                .collect();
            let status = Status::from(ApiError::InvalidArgument(violations));
            assert!(
                status.details().len() < DETAILS_BUDGET + 2 * MESSAGE_BUDGET,
                "{text:?}: {}",
                status.details().len()
            );
        }
    }

    #[test]
    fn one_huge_violation_is_cut() {
        let huge = FieldViolation::new("x".repeat(100_000), "é".repeat(100_000));
        let status = Status::from(ApiError::InvalidArgument(vec![huge]));
        let details = status.get_error_details();
        let carried = &details.bad_request().unwrap().field_violations;
        assert_eq!(carried.len(), 1);
        assert!(carried[0].field.len() <= VIOLATION_TEXT + 3);
        assert!(carried[0].description.len() <= VIOLATION_TEXT + 3);
        assert!(status.message().len() < 2 * VIOLATION_TEXT + 64);
    }

    #[test]
    fn exhaustion_carries_quota_failure_and_retry_info() {
        let status = Status::from(ApiError::ResourceExhausted {
            reason: "RATE_LIMITED",
            message: "slow down".to_owned(),
            subject: "tenants/acme".to_owned(),
            description: "10 requests per second".to_owned(),
            retry_after: Some(std::time::Duration::from_millis(250)),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(
            details.quota_failure().unwrap().violations[0].subject,
            "tenants/acme"
        );
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(details.error_info().unwrap().reason, "RATE_LIMITED");
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let status = Status::from(ApiError::internal("syntax error at or near SELECT"));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}
