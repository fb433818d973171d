//! Stand-ins for identity in unit tests, as far as the gateway asks it: `AuthService.GetJwks`
//! and `ApiKeyService.VerifyApiKey`, each call answered as the test says, after the delay it
//! says.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use palisade_grpc::MeshChannel;
use palisade_proto::palisade::identity::v1::{
    ApiKey, AuthTokens, CreateApiKeyRequest, CreateApiKeyResponse, GetApiKeyRequest,
    GetJwksRequest, Jwk, Jwks, ListApiKeysRequest, ListApiKeysResponse, LoginRequest,
    LogoutRequest, LogoutResponse, RefreshTokenRequest, RevokeApiKeyRequest, RevokeTokenRequest,
    RevokeTokenResponse, RotateSigningKeyRequest, VerifyApiKeyRequest, VerifyApiKeyResponse,
    api_key_service_server::{ApiKeyService, ApiKeyServiceServer},
    auth_service_server::{AuthService, AuthServiceServer},
};
use tonic::{Request, Response, Status};
use tower::Layer;

/// Fetch `n` (counting from 0) gets `answer(n)`: how long identity takes, and the keys.
type Answer = Box<dyn Fn(usize) -> (Duration, Vec<Jwk>) + Send + Sync>;

pub struct FakeAuth {
    fetches: AtomicUsize,
    answer: Answer,
}

impl FakeAuth {
    pub fn new(answer: impl Fn(usize) -> (Duration, Vec<Jwk>) + Send + Sync + 'static) -> Self {
        FakeAuth {
            fetches: AtomicUsize::new(0),
            answer: Box::new(answer),
        }
    }

    /// Publishes `keys`, at once, every time.
    pub fn publishing(keys: Vec<Jwk>) -> Self {
        FakeAuth::new(move |_| (Duration::ZERO, keys.clone()))
    }

    /// Serves it on a port of its own (with no API keys); the channel is the gateway's kind.
    pub async fn serve(self) -> MeshChannel {
        serve(
            self,
            FakeApiKeys::new(|_| (Duration::ZERO, Err(not_found()))),
        )
        .await
    }
}

/// `VerifyApiKey` call `n` (counting from 0) gets `answer(n)`: how long identity takes, and
/// its answer.
type KeyAnswer =
    Box<dyn Fn(usize) -> (Duration, Result<VerifyApiKeyResponse, Status>) + Send + Sync>;

pub struct FakeApiKeys {
    calls: Arc<AtomicUsize>,
    answer: KeyAnswer,
}

impl FakeApiKeys {
    pub fn new(
        answer: impl Fn(usize) -> (Duration, Result<VerifyApiKeyResponse, Status>)
        + Send
        + Sync
        + 'static,
    ) -> Self {
        FakeApiKeys {
            calls: Arc::default(),
            answer: Box::new(answer),
        }
    }

    /// The count of `VerifyApiKey` calls, to read while it serves.
    pub fn calls(&self) -> Arc<AtomicUsize> {
        self.calls.clone()
    }
}

/// Serves both on a port of their own; the channel is the gateway's kind.
pub async fn serve(auth: FakeAuth, keys: FakeApiKeys) -> MeshChannel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthServiceServer::new(auth))
            .add_service(ApiKeyServiceServer::new(keys))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    channel_to(address)
}

/// A channel to `address`, connecting when first used, as the gateway's are.
pub fn channel_to(address: SocketAddr) -> MeshChannel {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let metrics = palisade_telemetry::ComponentMetrics::new("gateway");
    palisade_grpc::ClientObserveLayer::new("gateway", metrics.rpc.client.clone())
        .layer(palisade_tenancy::PropagateContext::new(channel))
}

fn not_here<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not here"))
}

fn not_found() -> Status {
    Status::unauthenticated("the api key is invalid, expired or revoked")
}

#[tonic::async_trait]
impl ApiKeyService for FakeApiKeys {
    async fn verify_api_key(
        &self,
        _: Request<VerifyApiKeyRequest>,
    ) -> Result<Response<VerifyApiKeyResponse>, Status> {
        let (delay, answer) = (self.answer)(self.calls.fetch_add(1, Ordering::SeqCst));
        tokio::time::sleep(delay).await;
        answer.map(Response::new)
    }
    async fn create_api_key(
        &self,
        _: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        not_here()
    }
    async fn get_api_key(&self, _: Request<GetApiKeyRequest>) -> Result<Response<ApiKey>, Status> {
        not_here()
    }
    async fn list_api_keys(
        &self,
        _: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        not_here()
    }
    async fn revoke_api_key(
        &self,
        _: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<ApiKey>, Status> {
        not_here()
    }
}

#[tonic::async_trait]
impl AuthService for FakeAuth {
    async fn get_jwks(&self, _: Request<GetJwksRequest>) -> Result<Response<Jwks>, Status> {
        let (delay, keys) = (self.answer)(self.fetches.fetch_add(1, Ordering::SeqCst));
        tokio::time::sleep(delay).await;
        Ok(Response::new(Jwks { keys }))
    }
    async fn login(&self, _: Request<LoginRequest>) -> Result<Response<AuthTokens>, Status> {
        not_here()
    }
    async fn refresh_token(
        &self,
        _: Request<RefreshTokenRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        not_here()
    }
    async fn logout(&self, _: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        not_here()
    }
    async fn revoke_token(
        &self,
        _: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        not_here()
    }
    async fn rotate_signing_key(
        &self,
        _: Request<RotateSigningKeyRequest>,
    ) -> Result<Response<Jwk>, Status> {
        not_here()
    }
}
