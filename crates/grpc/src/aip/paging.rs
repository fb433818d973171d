//! Page sizes and opaque page tokens (AIP-158).
//!
//! A token is `base64url("p2." + query fingerprint + "." + cursor)`: opaque to clients, tied to
//! the list and filter it was issued for ([`ListQuery`]: a token brought to another is
//! refused), and carrying a cursor the store understands (e.g. the last row's sort key).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use super::Comparison;
use crate::ApiError;

/// The page size of a List that asks for none (every List's proto documents it).
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger requested page sizes are clamped to this (AIP-158 coerces rather than refuses).
pub const MAX_PAGE_SIZE: usize = 1000;

/// The comparisons of a filter field that only matches or excludes a value.
pub const EQUALITY: &[Comparison] = &[Comparison::Eq, Comparison::Ne];

/// Validates `page_size`: negative is an error, zero means [`DEFAULT_PAGE_SIZE`], above
/// [`MAX_PAGE_SIZE`] is clamped.
pub fn page_size(requested: i32) -> Result<usize, ApiError> {
    match usize::try_from(requested) {
        Err(_) => Err(ApiError::invalid("page_size", "must not be negative")),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
    }
}

/// Where a page of a list ordered by `(create_time, id)` resumes: after this row. Its cursor
/// text is `<create_time>:<id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedCursor {
    pub create_time: i64,
    pub id: String,
}

impl CreatedCursor {
    pub fn encode(&self) -> String {
        format!("{}:{}", self.create_time, self.id)
    }

    pub fn decode(cursor: &str) -> Result<CreatedCursor, ApiError> {
        let malformed = || ApiError::invalid("page_token", "malformed page token");
        let (time, id) = cursor.split_once(':').ok_or_else(malformed)?;
        Ok(CreatedCursor {
            create_time: time.parse().map_err(|_| malformed())?,
            id: id.to_owned(),
        })
    }
}

/// What a page token belongs to: one collection under one parent, read with one filter. A
/// token brought to another list (another tenant's users, the same tenant's API keys) or
/// filter is refused rather than read as a cursor there, where it would skip or repeat rows
/// without a word.
#[derive(Clone, Copy, Debug)]
pub struct ListQuery<'a> {
    /// The collection's name, e.g. `users`.
    pub collection: &'a str,
    /// The request's `parent`; empty for a top-level collection.
    pub parent: &'a str,
    pub filter: &'a str,
}

/// Finishes a page that was fetched with one row more than `page_size`: drops the extra row
/// and returns the token of the next page, or `""` when this is the last one.
pub fn finish_page<T>(
    rows: &mut Vec<T>,
    page_size: usize,
    query: &ListQuery<'_>,
    cursor_of: impl Fn(&T) -> String,
) -> String {
    if rows.len() <= page_size {
        return String::new();
    }
    rows.truncate(page_size);
    rows.last().map_or_else(String::new, |last| {
        encode_page_token(query, &cursor_of(last))
    })
}

pub fn encode_page_token(query: &ListQuery<'_>, cursor: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("p2.{}.{cursor}", fingerprint(query)))
}

/// The cursor inside `token`, or `None` for an empty token (the first page).
pub fn decode_page_token(token: &str, query: &ListQuery<'_>) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || ApiError::invalid("page_token", "malformed page token");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
    let raw = String::from_utf8(raw).map_err(|_| malformed())?;
    let rest = raw.strip_prefix("p2.").ok_or_else(malformed)?;
    let (print, cursor) = rest.split_once('.').ok_or_else(malformed)?;
    if print != fingerprint(query) {
        return Err(ApiError::invalid(
            "page_token",
            "page token was issued for another list or filter",
        ));
    }
    if cursor.is_empty() {
        return Err(malformed());
    }
    Ok(Some(cursor.to_owned()))
}

fn fingerprint(query: &ListQuery<'_>) -> String {
    let mut hash = Sha256::new();
    // Each part ends with a byte none holds, so no two queries hash the same text.
    for part in [query.collection, query.parent, query.filter] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex_prefix(&hash.finalize())
}

fn hex_prefix(digest: &[u8]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert!(page_size(-1).is_err());
    }

    const USERS: ListQuery<'static> = ListQuery {
        collection: "users",
        parent: "tenants/acme",
        filter: "",
    };

    #[test]
    fn pages_end_with_a_token_only_when_more_rows_exist() {
        let mut rows = vec![1, 2, 3];
        let token = finish_page(&mut rows, 2, &USERS, |row| row.to_string());
        assert_eq!(rows, [1, 2]);
        assert_eq!(
            decode_page_token(&token, &USERS).unwrap().as_deref(),
            Some("2")
        );
        let mut last = vec![1, 2];
        assert_eq!(finish_page(&mut last, 2, &USERS, |row| row.to_string()), "");
        assert_eq!(last, [1, 2]);
    }

    #[test]
    fn created_cursors_round_trip() {
        let cursor = CreatedCursor {
            create_time: 17,
            id: "a:b".into(),
        };
        assert_eq!(CreatedCursor::decode(&cursor.encode()).unwrap(), cursor);
        assert!(CreatedCursor::decode("nope").is_err());
        assert!(CreatedCursor::decode("x:1").is_err());
    }

    #[test]
    fn tokens_round_trip_and_bind_to_their_list_and_filter() {
        let free = ListQuery {
            filter: "plan = \"PLAN_FREE\"",
            ..USERS
        };
        let token = encode_page_token(&free, "cursor-1");
        assert_eq!(
            decode_page_token(&token, &free).unwrap().as_deref(),
            Some("cursor-1")
        );
        for other in [
            USERS,
            ListQuery {
                collection: "apiKeys",
                ..free
            },
            ListQuery {
                parent: "tenants/globex",
                ..free
            },
        ] {
            assert!(decode_page_token(&token, &other).is_err(), "{other:?}");
        }
        assert_eq!(decode_page_token("", &USERS).unwrap(), None);
        let old_format = URL_SAFE_NO_PAD.encode("p1.000000000000.cursor");
        for bad in [
            "!!!",
            "bm90LWEtdG9rZW4",
            &URL_SAFE_NO_PAD.encode("p2.zz."),
            &old_format,
        ] {
            assert!(decode_page_token(bad, &USERS).is_err(), "{bad}");
        }
    }
}
