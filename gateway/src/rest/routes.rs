//! `google.api.http` path templates (`/v1/{name=tenants/*}:verify`) parsed once at start and
//! matched against request paths. Pure string functions, free of descriptors and I/O, so they
//! can be unit-tested and fuzzed on their own.
//!
//! Grammar (google/api/http.proto):
//! `Template = "/" Segments [ Verb ]`, `Segment = "*" | "**" | LITERAL | Variable`,
//! `Variable = "{" FieldPath [ "=" Segments ] "}"`, `Verb = ":" LITERAL`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: the rest of the path, zero or more segments; only last.
    Rest,
}

/// A variable: the field it sets and the range of `parts` it captures.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Template {
    pub fn parse(template: &str) -> Result<Template, TemplateError> {
        let error = |why: &str| TemplateError(format!("{template}: {why}"));
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| error("must start with `/`"))?;
        // The verb is the `:` outside braces after the last `/`, e.g. `{name=a/*}:verify`.
        let (mut depth, mut last_slash, mut verb_at) = (0i32, 0, None);
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                '/' if depth == 0 => last_slash = i,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
        }
        let (path, verb) = match verb_at {
            Some(at) if at >= last_slash => (&rest[..at], Some(rest[at + 1..].to_owned())),
            _ => (rest, None),
        };
        if verb
            .as_deref()
            .is_some_and(|v| v.is_empty() || !is_literal(v))
        {
            return Err(error("bad verb"));
        }
        let mut parsed = Template {
            parts: Vec::new(),
            variables: Vec::new(),
            verb,
        };
        for segment in split_outside_braces(path) {
            if let Some(inner) = segment.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| error("unclosed variable"))?;
                let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                if field.is_empty()
                    || !field
                        .split('.')
                        .all(|name| !name.is_empty() && name.bytes().all(is_ident))
                {
                    return Err(error("bad variable name"));
                }
                if parsed.variables.iter().any(|v| v.field == field) {
                    return Err(error("variable bound twice"));
                }
                let start = parsed.parts.len();
                for piece in pattern.split('/') {
                    parsed
                        .parts
                        .push(parse_plain(piece).ok_or_else(|| error("bad segment"))?);
                }
                parsed.variables.push(Variable {
                    field: field.to_owned(),
                    start,
                    end: parsed.parts.len(),
                });
            } else {
                parsed
                    .parts
                    .push(parse_plain(segment).ok_or_else(|| error("bad segment"))?);
            }
        }
        let rest_at = parsed.parts.iter().position(|p| *p == Part::Rest);
        if rest_at.is_some_and(|at| at + 1 != parsed.parts.len()) {
            return Err(error("`**` must be the last segment"));
        }
        Ok(parsed)
    }

    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// How specific the template is: verbs first, then more literal segments, so that
    /// `/v1/tenants:search` wins over `/v1/{name=*}` and `/v1/tenants` over `/v1/{x=*}`.
    fn specificity(&self) -> (bool, usize, usize) {
        let literals = self
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Literal(_)))
            .count();
        let bounded = usize::from(!self.parts.contains(&Part::Rest));
        (self.verb.is_some(), literals, bounded)
    }

    /// The variable bindings `(field path, value)` if `path` (no query string) matches.
    /// Values are percent-decoded; a multi-segment value keeps `%2F` encoded so its `/`s
    /// stay distinguishable from the separators (grpc-gateway does the same).
    pub fn matches(&self, path: &str) -> Option<Bindings> {
        let mut path = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            path = path.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let segments: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        // ends[i]: the index in `segments` just past what `parts[i]` consumed.
        let mut ends = Vec::with_capacity(self.parts.len());
        let mut at = 0;
        for part in &self.parts {
            match part {
                Part::Literal(literal) => {
                    if segments.get(at) != Some(&literal.as_str()) {
                        return None;
                    }
                    at += 1;
                }
                Part::One => {
                    if segments.get(at).is_none_or(|s| s.is_empty()) {
                        return None;
                    }
                    at += 1;
                }
                Part::Rest => at = segments.len(),
            }
            ends.push(at);
        }
        if at != segments.len() {
            return None;
        }
        let mut bindings = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let from = if variable.start == 0 {
                0
            } else {
                ends[variable.start - 1]
            };
            let to = ends[variable.end - 1];
            let single =
                variable.end - variable.start == 1 && self.parts[variable.start] == Part::One;
            let value = segments[from..to]
                .iter()
                .map(|segment| percent_decode(segment, !single))
                .collect::<Option<Vec<_>>>()?
                .join("/");
            bindings.push((variable.field.clone(), value));
        }
        Some(bindings)
    }
}

fn split_outside_braces(path: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in path.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&path[start..]);
    out
}

fn parse_plain(segment: &str) -> Option<Part> {
    match segment {
        "*" => Some(Part::One),
        "**" => Some(Part::Rest),
        literal if !literal.is_empty() && is_literal(literal) => {
            Some(Part::Literal(literal.to_owned()))
        }
        _ => None,
    }
}

fn is_literal(text: &str) -> bool {
    !text.contains(['{', '}', '/', ':', '*', '='])
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Decodes `%XX` escapes; `None` for malformed escapes or invalid UTF-8. With `keep_slash`,
/// `%2F` stays as is.
pub fn percent_decode(text: &str, keep_slash: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if keep_slash && value == b'/' {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(value);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A matched path's variables: `(field path, value)`, in template order.
pub type Bindings = Vec<(String, String)>;

/// Why no route answered.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// No template matches the path.
    NotFound,
    /// A template matches the path, but not with this HTTP method.
    MethodNotAllowed,
}

/// HTTP method + template → `T`, searched most specific first.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<(http::Method, Template, T)>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router { routes: Vec::new() }
    }
}

impl<T> Router<T> {
    pub fn add(&mut self, method: http::Method, template: Template, target: T) {
        self.routes.push((method, template, target));
        // Stable, so equally specific templates keep declaration order.
        self.routes
            .sort_by_key(|(_, template, _)| std::cmp::Reverse(template.specificity()));
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The target for `method` and `path`, with the path's variable bindings.
    pub fn find(&self, method: &http::Method, path: &str) -> Result<(&T, Bindings), NoRoute> {
        let mut path_matched = false;
        for (route_method, template, target) in &self.routes {
            if let Some(bindings) = template.matches(path) {
                if route_method == method {
                    return Ok((target, bindings));
                }
                path_matched = true;
            }
        }
        Err(if path_matched {
            NoRoute::MethodNotAllowed
        } else {
            NoRoute::NotFound
        })
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    fn check(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template).unwrap().matches(path)
    }

    fn bound(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn literal_templates_match_only_themselves() {
        assert_eq!(check("/v1/tenants", "/v1/tenants"), bound(&[]));
        assert_eq!(check("/v1/tenants", "/v1/tenants/"), None);
        assert_eq!(check("/v1/tenants", "/v1/tenant"), None);
        assert_eq!(check("/v1/tenants", "/v1"), None);
        assert_eq!(check("/v1/tenants", "v1/tenants"), None);
    }

    #[test]
    fn variables_capture_their_segments() {
        assert_eq!(
            check("/v1/{name=tenants/*}", "/v1/tenants/acme"),
            bound(&[("name", "tenants/acme")])
        );
        assert_eq!(check("/v1/{name=tenants/*}", "/v1/tenants"), None);
        assert_eq!(check("/v1/{name=tenants/*}", "/v1/tenants/"), None);
        assert_eq!(check("/v1/{name=tenants/*}", "/v1/users/acme"), None);
        assert_eq!(
            check("/v1/{name=tenants/*/users/*}", "/v1/tenants/acme/users/ada"),
            bound(&[("name", "tenants/acme/users/ada")])
        );
        assert_eq!(
            check("/v1/{name=tenants/*/users/*}", "/v1/tenants/acme/users"),
            None
        );
        assert_eq!(
            check(
                "/v1/{parent=tenants/*}/auditEvents",
                "/v1/tenants/acme/auditEvents"
            ),
            bound(&[("parent", "tenants/acme")])
        );
        assert_eq!(
            check("/v1/tenants/{tenant}/x/{id}", "/v1/tenants/a/x/b"),
            bound(&[("tenant", "a"), ("id", "b")])
        );
        assert_eq!(
            check("/v1/{a.b.c}", "/v1/deep"),
            bound(&[("a.b.c", "deep")])
        );
    }

    #[test]
    fn double_wildcards_take_the_rest() {
        assert_eq!(
            check("/v1/{path=files/**}", "/v1/files/a/b/c"),
            bound(&[("path", "files/a/b/c")])
        );
        assert_eq!(
            check("/v1/{path=files/**}", "/v1/files"),
            bound(&[("path", "files")])
        );
        assert_eq!(check("/v1/**", "/v1/anything/at/all"), bound(&[]));
        assert!(Template::parse("/v1/**/x").is_err());
    }

    #[test]
    fn verbs_are_matched_and_stripped() {
        let export = "/v1/{parent=tenants/*}/auditEvents:export";
        assert_eq!(
            check(export, "/v1/tenants/acme/auditEvents:export"),
            bound(&[("parent", "tenants/acme")])
        );
        assert_eq!(check(export, "/v1/tenants/acme/auditEvents"), None);
        assert_eq!(check(export, "/v1/tenants/acme/auditEvents:verify"), None);
        assert_eq!(
            check("/v1/apiKeys:verify", "/v1/apiKeys:verify"),
            bound(&[])
        );
        assert_eq!(check("/v1/apiKeys:verify", "/v1/apiKeys"), None);
        assert_eq!(
            check("/v1/{name=tenants/*}:verify", "/v1/tenants/acme:verify"),
            bound(&[("name", "tenants/acme")])
        );
    }

    #[test]
    fn values_are_percent_decoded() {
        assert_eq!(
            check("/v1/{name=tenants/*}", "/v1/tenants/a%20b"),
            bound(&[("name", "tenants/a b")])
        );
        // One segment: the escaped slash is data; several: it stays escaped.
        assert_eq!(check("/v1/{id}", "/v1/a%2Fb"), bound(&[("id", "a/b")]));
        assert_eq!(
            check("/v1/{name=x/*}", "/v1/x/a%2Fb"),
            bound(&[("name", "x/a%2Fb")])
        );
        assert_eq!(check("/v1/{id}", "/v1/%zz"), None);
        assert_eq!(check("/v1/{id}", "/v1/%ff"), None);
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "v1/x",
            "/v1/{name",
            "/v1/{=x}",
            "/v1/{a}/{a}",
            "/v1//x",
            "/v1/x:",
            "/v1/{a-b}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn the_router_prefers_specific_routes_and_tells_404_from_405() {
        let mut router = Router::default();
        let t = |s| Template::parse(s).unwrap();
        router.add(Method::GET, t("/v1/{name=tenants/*}"), "get");
        router.add(Method::POST, t("/v1/{name=tenants/*}:verify"), "verify");
        router.add(Method::GET, t("/v1/tenants"), "list");
        router.add(Method::POST, t("/v1/tenants"), "create");
        assert_eq!(router.find(&Method::GET, "/v1/tenants").unwrap().0, &"list");
        assert_eq!(
            router.find(&Method::POST, "/v1/tenants").unwrap().0,
            &"create"
        );
        let (target, bindings) = router
            .find(&Method::POST, "/v1/tenants/acme:verify")
            .unwrap();
        assert_eq!(
            (target, bindings),
            (&"verify", bound(&[("name", "tenants/acme")]).unwrap())
        );
        assert_eq!(
            router.find(&Method::DELETE, "/v1/tenants").unwrap_err(),
            NoRoute::MethodNotAllowed
        );
        assert_eq!(
            router.find(&Method::GET, "/v2/tenants").unwrap_err(),
            NoRoute::NotFound
        );
    }
}
