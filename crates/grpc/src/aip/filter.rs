//! The AIP-160 subset Palisade filters accept: comparisons `field op value` joined by `AND`,
//! values quoted (`"..."`, with `\"` escapes) or bare words. Each List method names the fields
//! it filters on and the operators each allows; anything else is `INVALID_ARGUMENT`.

use crate::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Comparison {
    pub fn sql(self) -> &'static str {
        match self {
            Comparison::Eq => "=",
            Comparison::Ne => "<>",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        }
    }
}

/// A field a List method filters on, with the comparisons it allows.
#[derive(Clone, Copy, Debug)]
pub struct FilterField {
    pub name: &'static str,
    pub comparisons: &'static [Comparison],
}

/// One comparison of a parsed filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub field: &'static str,
    pub comparison: Comparison,
    pub value: String,
}

/// Comparisons one filter may join: more than any real query needs (each field has a few
/// useful ones), few enough that a filter cannot make a statement of thousands of conditions
/// and bound values for the database to plan.
pub const MAX_TERMS: usize = 16;

/// The longest filter, in bytes: room for [`MAX_TERMS`] comparisons with long values. Checked
/// before the filter is split into tokens, so a request carrying megabytes of filter (a few
/// kilobytes gzipped) costs no token per word.
pub const MAX_FILTER_BYTES: usize = 8 * 1024;

/// Parses `filter` against the allowed `fields`; an empty filter is no terms.
pub fn parse_filter(filter: &str, fields: &[FilterField]) -> Result<Vec<Term>, ApiError> {
    if filter.len() > MAX_FILTER_BYTES {
        return Err(invalid(&format!("is longer than {MAX_FILTER_BYTES} bytes")));
    }
    let tokens = tokenize(filter)?;
    let mut terms = Vec::new();
    let mut rest = tokens.as_slice();
    while !rest.is_empty() {
        if terms.len() == MAX_TERMS {
            return Err(invalid(&format!("joins more than {MAX_TERMS} comparisons")));
        }
        let [Token::Word(name), Token::Op(comparison), value, tail @ ..] = rest else {
            return Err(invalid("expected `field operator value`"));
        };
        let Some(field) = fields.iter().find(|field| field.name == name) else {
            let known: Vec<_> = fields.iter().map(|f| f.name).collect();
            return Err(invalid(&format!(
                "unknown field `{}`; filterable fields: {}",
                crate::echoed(name),
                known.join(", ")
            )));
        };
        if !field.comparisons.contains(comparison) {
            return Err(invalid(&format!(
                "`{name}` does not support `{}`",
                comparison.sql()
            )));
        }
        let value = match value {
            Token::Word(word) | Token::Quoted(word) => word.clone(),
            Token::Op(_) => return Err(invalid("expected a value after the operator")),
        };
        terms.push(Term {
            field: field.name,
            comparison: *comparison,
            value,
        });
        rest = match tail {
            [] => tail,
            [Token::Word(and), next @ ..] if and == "AND" && !next.is_empty() => next,
            _ => return Err(invalid("terms must be joined by `AND`")),
        };
    }
    Ok(terms)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(Comparison),
}

fn tokenize(filter: &str) -> Result<Vec<Token>, ApiError> {
    let mut tokens = Vec::new();
    let mut chars = filter.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => {
                            value.push(chars.next().ok_or_else(|| invalid("unterminated string"))?)
                        }
                        Some(other) => value.push(other),
                        None => return Err(invalid("unterminated string")),
                    }
                }
                tokens.push(Token::Quoted(value));
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let with_eq = chars.next_if_eq(&'=').is_some();
                let op = match (c, with_eq) {
                    ('=', false) => Comparison::Eq,
                    ('!', true) => Comparison::Ne,
                    ('<', false) => Comparison::Lt,
                    ('<', true) => Comparison::Le,
                    ('>', false) => Comparison::Gt,
                    ('>', true) => Comparison::Ge,
                    _ => return Err(invalid("unknown operator")),
                };
                tokens.push(Token::Op(op));
            }
            _ => {
                let mut word = String::new();
                while let Some(c) = chars.next_if(|c| c.is_alphanumeric() || "_.-:".contains(*c)) {
                    word.push(c);
                }
                if word.is_empty() {
                    return Err(invalid(&format!("unexpected character `{c}`")));
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

fn invalid(description: &str) -> ApiError {
    ApiError::invalid("filter", description)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[FilterField] = &[
        FilterField {
            name: "action",
            comparisons: &[Comparison::Eq],
        },
        FilterField {
            name: "occur_time",
            comparisons: &[
                Comparison::Ge,
                Comparison::Gt,
                Comparison::Le,
                Comparison::Lt,
            ],
        },
    ];

    fn check(filter: &str) -> Result<Vec<(&'static str, Comparison, String)>, String> {
        parse_filter(filter, FIELDS)
            .map(|terms| {
                terms
                    .into_iter()
                    .map(|t| (t.field, t.comparison, t.value))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_the_subset() {
        assert_eq!(check("").unwrap(), vec![]);
        assert_eq!(
            check(r#"action = "identity.tenants.create" AND occur_time >= "2026-01-01T00:00:00Z""#)
                .unwrap(),
            vec![
                (
                    "action",
                    Comparison::Eq,
                    "identity.tenants.create".to_owned()
                ),
                (
                    "occur_time",
                    Comparison::Ge,
                    "2026-01-01T00:00:00Z".to_owned()
                ),
            ]
        );
        assert_eq!(
            check(r#"action = "say \"hi\"""#).unwrap()[0].2,
            "say \"hi\""
        );
        assert_eq!(check("action=x.y").unwrap()[0].2, "x.y");
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "colour = \"red\"",
            "action >= \"x\"",
            "action = ",
            "action = \"x",
            "action = x OR action = y",
            "action = x AND",
            "action == x",
            "(action = x)",
        ] {
            let error = check(bad).unwrap_err();
            assert!(error.contains("filter"), "{bad}: {error}");
        }
        assert!(
            check("colour = red")
                .unwrap_err()
                .contains("unknown field `colour`")
        );
    }

    #[test]
    fn a_filter_joins_a_bounded_number_of_comparisons() {
        let joined = |n: usize| vec!["action = x"; n].join(" AND ");
        assert_eq!(check(&joined(MAX_TERMS)).unwrap().len(), MAX_TERMS);
        let error = check(&joined(MAX_TERMS + 1)).unwrap_err();
        assert!(error.contains("more than 16 comparisons"), "{error}");
        let long = "a ".repeat(MAX_FILTER_BYTES);
        let error = check(&long).unwrap_err();
        assert!(error.contains("longer than 8192 bytes"), "{error}");
    }
}
