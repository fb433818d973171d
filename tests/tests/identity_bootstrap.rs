//! First start: the system tenant and one bootstrap operator key. Later starts mint no other,
//! also once that key has been revoked: an operator who revokes a leaked bootstrap key must
//! not find a fresh one in the next start's log. The key that replaces it, made with it,
//! retires it and stays.

mod common;
mod keys_kit;

use std::time::Duration;

use palisade_proto::palisade::identity::v1::{
    ApiKey, ApiKeyState, ListApiKeysRequest, RevokeApiKeyRequest,
    api_key_service_client::ApiKeyServiceClient,
};
use palisade_testkit::{Component, Mesh, with_api_key};
use tonic::transport::Channel;

use keys_kit::{create, key_request};

const BOOTSTRAP_KEY: &str = "bootstrap-operator";

async fn bootstrap_keys(
    keys: &mut ApiKeyServiceClient<Channel>,
    credential: &str,
) -> anyhow::Result<Vec<ApiKey>> {
    let request = ListApiKeysRequest {
        parent: "tenants/system".into(),
        page_size: 100,
        ..Default::default()
    };
    let listed = keys
        .list_api_keys(with_api_key(request, credential))
        .await?
        .into_inner();
    Ok(listed
        .api_keys
        .into_iter()
        .filter(|key| key.display_name == BOOTSTRAP_KEY)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mints_no_new_operator_key_even_once_it_was_revoked() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mut mesh = builder.start().await?;
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        // A second operator key, to look with once the bootstrap key is revoked.
        let mut request = key_request("system", "second", &["*"], 30);
        if let Some(key) = request.api_key.as_mut() {
            key.owner = "tenants/system".into();
        }
        let second = create(&mut keys, mesh.as_operator(request)).await?.key;
        let first = bootstrap_keys(&mut keys, &second).await?;
        assert_eq!(first.len(), 1, "{backend}: {first:?}");

        mesh.stop_component(Component::Identity).await?;
        mesh.restart(Component::Identity).await?;
        assert_eq!(
            bootstrap_keys(&mut keys, &second).await?,
            first,
            "{backend}"
        );

        // The second key was made with the bootstrap key, so revoking that would revoke it
        // too (and leave the operator with no key): it retires the bootstrap key only when
        // told to keep itself (`keep_calling_key`).
        let mut revoke = RevokeApiKeyRequest {
            name: first[0].name.clone(),
            keep_calling_key: false,
        };
        let refused = keys
            .revoke_api_key(with_api_key(revoke.clone(), &second))
            .await;
        let refused = common::expect_code(refused, tonic::Code::FailedPrecondition);
        assert_eq!(common::reason(&refused), "WOULD_REVOKE_CALLER", "{backend}");
        revoke.keep_calling_key = true;
        keys.revoke_api_key(with_api_key(revoke, &second)).await?;
        mesh.stop_component(Component::Identity).await?;
        mesh.restart(Component::Identity).await?;
        let after = bootstrap_keys(&mut keys, &second).await?;
        assert_eq!(after.len(), 1, "{backend}: a new key was minted: {after:?}");
        assert_eq!(after[0].name, first[0].name, "{backend}");
        assert_eq!(after[0].state(), ApiKeyState::Revoked, "{backend}");
        mesh.stop().await?;
    }
    Ok(())
}

/// The bootstrap key lives as long as any API key may (`--api-key-max-lifetime`), not longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_key_lives_at_most_the_api_key_lifetime() -> anyhow::Result<()> {
    const DAY: i64 = 86_400;
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder
            .with_api_key_max_lifetime(Duration::from_secs(10 * DAY as u64))
            .start()
            .await?;
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        let bootstrap = bootstrap_keys(&mut keys, mesh.operator_key()).await?;
        let (create, expire) = (
            bootstrap[0].create_time.expect("a create time"),
            bootstrap[0].expire_time.expect("an expire time"),
        );
        assert_eq!(expire.seconds - create.seconds, 10 * DAY, "{backend}");
        mesh.stop().await?;
    }
    Ok(())
}

/// A first start that fails loses no operator key, which no later start would make again:
/// identity makes it only once nothing else in its start can fail, and the dev mesh saves it
/// as soon as identity has made it, before the other components start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_that_fails_loses_no_operator_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = palisade::MeshOptions::new(dir.path().to_path_buf());
    options.ports = palisade::Ports::ANY;
    options.admin_ports = None;
    let key_file = palisade::operator_key::path(dir.path());

    // Identity cannot read its KEK: it fails once its database is made, and makes no key.
    std::fs::create_dir_all(options.certs_dir())?;
    std::fs::write(options.signing_key_kek(), "not a key\n")?;
    assert!(palisade::LocalMesh::start(options.clone()).await.is_err());
    assert!(!key_file.exists());
    std::fs::remove_file(options.signing_key_kek())?;

    // Identity starts and makes the key; the gateway then fails on a missing certificate.
    let missing = dir.path().join("missing");
    options.public_tls = Some((missing.join("public.crt"), missing.join("public.key")));
    assert!(palisade::LocalMesh::start(options.clone()).await.is_err());
    let saved = std::fs::read_to_string(&key_file)?.trim().to_owned();

    // The next start makes none, and the saved key is the operator's.
    options.public_tls = None;
    let mesh = palisade::LocalMesh::start(options).await?;
    assert_eq!(mesh.operator_key, None);
    let gateway = tonic::transport::Endpoint::from_shared(mesh.addresses.gateway.clone())?
        .connect()
        .await?;
    let keys = bootstrap_keys(&mut ApiKeyServiceClient::new(gateway), &saved).await;
    mesh.stop().await?;
    assert_eq!(keys?.len(), 1);
    Ok(())
}
