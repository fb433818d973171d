//! Tests of the parent module.

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
fn openapi_paths_spell_out_the_literals_of_variables() {
    let render = |template: &str| {
        let (path, parameters) = Template::parse(template).unwrap().openapi_path();
        let names: Vec<String> = parameters
            .into_iter()
            .map(|p| format!("{}<-{}", p.name, p.field.unwrap_or_default()))
            .collect();
        (path, names)
    };
    assert_eq!(
        render("/v1/{name=tenants/*}"),
        ("/v1/tenants/{tenant}".into(), vec!["tenant<-name".into()])
    );
    assert_eq!(
        render("/v1/{parent=tenants/*}/auditEvents:export"),
        (
            "/v1/tenants/{tenant}/auditEvents:export".into(),
            vec!["tenant<-parent".into()]
        )
    );
    assert_eq!(
        render("/v1/{name=tenants/*/users/*}"),
        (
            "/v1/tenants/{tenant}/users/{user}".into(),
            vec!["tenant<-name".into(), "user<-name".into()]
        )
    );
    assert_eq!(
        render("/v1/{a.b}/x/{c}"),
        (
            "/v1/{a.b}/x/{c}".into(),
            vec!["a.b<-a.b".into(), "c<-c".into()]
        )
    );
    assert_eq!(
        render("/v1/{name=x/*/x/*}"),
        (
            "/v1/x/{xId}/x/{xId2}".into(),
            vec!["xId<-name".into(), "xId2<-name".into()]
        )
    );
    assert_eq!(render("/v1/tenants").0, "/v1/tenants");
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
        NoRoute::MethodNotAllowed(vec![Method::GET, Method::HEAD, Method::POST])
    );
    // HEAD is GET without content.
    assert_eq!(
        router.find(&Method::HEAD, "/v1/tenants").unwrap().0,
        &"list"
    );
    router.add(Method::POST, t("/v1/things"), "make");
    assert_eq!(
        router.find(&Method::HEAD, "/v1/things").unwrap_err(),
        NoRoute::MethodNotAllowed(vec![Method::POST])
    );
    assert_eq!(
        router.find(&Method::GET, "/v2/tenants").unwrap_err(),
        NoRoute::NotFound
    );
    // A path of the right shape whose value does not decode is bad input, not a missing
    // resource (grpc-gateway answers 400 too).
    for bad in ["/v1/tenants/%zz:verify", "/v1/tenants/%ff:verify"] {
        assert_eq!(
            router.find(&Method::POST, bad).unwrap_err(),
            NoRoute::MalformedValue("name".into()),
            "{bad}"
        );
    }
    // ... unless a less specific route takes the path without decoding it.
    router.add(Method::POST, t("/v1/**"), "anything");
    assert_eq!(
        router
            .find(&Method::POST, "/v1/tenants/%zz:verify")
            .unwrap()
            .0,
        &"anything"
    );
}
