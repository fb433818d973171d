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

    /// The field paths the template binds, in template order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field.as_str())
    }

    /// The template as an OpenAPI path with its parameters. A variable's literal segments are
    /// spelled out and each of its wildcards becomes a parameter named after the literal before
    /// it (`/v1/{name=tenants/*}` → `/v1/tenants/{tenant}`, as protoc-gen-openapiv2's
    /// `expand_slashed_path_patterns` does), so the documented URL is the URL a client sends: an
    /// OpenAPI parameter cannot hold a `/`. A variable that is one wildcard keeps its field path
    /// as the name (`/v1/{id}`).
    pub fn openapi_path(&self) -> (String, Vec<PathParameter>) {
        let mut path = String::new();
        let mut parameters: Vec<PathParameter> = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            path.push('/');
            let name_base = match part {
                Part::Literal(literal) => {
                    path.push_str(literal);
                    continue;
                }
                Part::One | Part::Rest => {
                    let variable = self
                        .variables
                        .iter()
                        .find(|v| (v.start..v.end).contains(&i));
                    match variable {
                        Some(v) if v.end - v.start == 1 => v.field.clone(),
                        _ => match i.checked_sub(1).map(|at| &self.parts[at]) {
                            Some(Part::Literal(before)) => singular(before),
                            _ => "segment".to_owned(),
                        },
                    }
                }
            };
            let mut name = name_base.clone();
            let mut n = 2;
            while parameters.iter().any(|p| p.name == name) {
                name = format!("{name_base}{n}");
                n += 1;
            }
            path.push('{');
            path.push_str(&name);
            path.push('}');
            let variable = self
                .variables
                .iter()
                .find(|v| (v.start..v.end).contains(&i));
            parameters.push(PathParameter {
                name,
                field: variable.map(|v| v.field.clone()),
                pattern: variable.map(|v| self.pattern(v)),
                rest: *part == Part::Rest,
            });
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        (path, parameters)
    }

    /// A variable's segments as written in the template (`tenants/*`).
    fn pattern(&self, variable: &Variable) -> String {
        self.parts[variable.start..variable.end]
            .iter()
            .map(|part| match part {
                Part::Literal(literal) => literal.as_str(),
                Part::One => "*",
                Part::Rest => "**",
            })
            .collect::<Vec<_>>()
            .join("/")
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

    /// The variable bindings `(field path, value)` if `path` (no query string) matches and
    /// every value decodes (see [`Template::match_path`]).
    pub fn matches(&self, path: &str) -> Option<Bindings> {
        self.match_path(path)?.ok()
    }

    /// Whether `path` (no query string) has this template's shape, and then its variable
    /// bindings `(field path, value)`, or the field whose value is a bad percent-escape or not
    /// UTF-8 (grpc-gateway answers 400 for it, not 404). Values are percent-decoded; a
    /// multi-segment value keeps `%2F` encoded so its `/`s stay distinguishable from the
    /// separators (grpc-gateway does the same).
    pub fn match_path(&self, path: &str) -> Option<Result<Bindings, String>> {
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
                .collect::<Option<Vec<_>>>();
            let Some(value) = value else {
                return Some(Err(variable.field.clone()));
            };
            bindings.push((variable.field.clone(), value.join("/")));
        }
        Some(Ok(bindings))
    }
}

/// One parameter of [`Template::openapi_path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathParameter {
    /// The name in the OpenAPI path (`tenant` in `/v1/tenants/{tenant}`).
    pub name: String,
    /// The request field the segment goes into, if any (`name`).
    pub field: Option<String>,
    /// The variable's segments in the template (`tenants/*`).
    pub pattern: Option<String>,
    /// A `**`: the rest of the path, slashes included.
    pub rest: bool,
}

/// `tenants` → `tenant`, `auditEvents` → `auditEvent`; a word without a plural `s` gets `Id`.
fn singular(literal: &str) -> String {
    match literal.strip_suffix('s') {
        Some(stem) if !stem.is_empty() && !stem.ends_with('s') => stem.to_owned(),
        _ => format!("{literal}Id"),
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
    /// A template matches the path, but not with this HTTP method: the methods it takes
    /// (for `Allow`), `HEAD` wherever `GET` is.
    MethodNotAllowed(Vec<http::Method>),
    /// A template and method match, but the value of this field (its path) has a bad
    /// percent-escape or is not UTF-8.
    MalformedValue(String),
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

    /// The target for `method` and `path`, with the path's variable bindings. `HEAD` finds
    /// the `GET` route (RFC 9110 §9.3.2: the same answer without content).
    pub fn find(&self, method: &http::Method, path: &str) -> Result<(&T, Bindings), NoRoute> {
        let wanted = if method == http::Method::HEAD {
            &http::Method::GET
        } else {
            method
        };
        let mut allowed = Vec::new();
        // A value that does not decode is told only if no less specific route takes the path.
        let mut malformed = None;
        for (route_method, template, target) in &self.routes {
            if let Some(bindings) = template.match_path(path) {
                if route_method == wanted {
                    match bindings {
                        Ok(bindings) => return Ok((target, bindings)),
                        Err(field) => {
                            malformed.get_or_insert(field);
                            continue;
                        }
                    }
                }
                allowed.push(route_method.clone());
                if route_method == http::Method::GET {
                    allowed.push(http::Method::HEAD);
                }
            }
        }
        if let Some(field) = malformed {
            return Err(NoRoute::MalformedValue(field));
        }
        if allowed.is_empty() {
            return Err(NoRoute::NotFound);
        }
        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allowed.dedup();
        Err(NoRoute::MethodNotAllowed(allowed))
    }
}

#[cfg(test)]
mod tests;
