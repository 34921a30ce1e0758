//! Authentication and authorization of callers, the way kubelet protects `nodes/stats` and
//! `nodes/metrics` and the way an APIService backend (metrics-server) serves metrics.k8s.io:
//!
//! - **who**: a client certificate signed by the client CA (user = CN, groups = O); a
//!   certificate from the front-proxy CA (the API server's aggregation layer) whose
//!   `X-Remote-User` / `X-Remote-Group` / `X-Remote-Extra-*` headers name the user; or a
//!   bearer token checked with a TokenReview. Results are cached with a TTL.
//! - **may they**: always (the authenticated caller is enough), or a SubjectAccessReview for
//!   the request's attributes (verb, resource, subresource, name, namespace), cached with
//!   kubelet's TTLs (5 min allowed, 30 s denied).
//!
//! Health checks are public (they say nothing about tenants); everything else needs both.
//! Done in process rather than by a kube-rbac-proxy sidecar: gRPC streams and health stay
//! native (no HTTP/1 proxy hop), the same code guards the gRPC and HTTP listeners of the
//! collector and the aggregator, and the tests can exercise every refusal.

mod gate;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use gate::{AttributesOf, AuthLayer, AuthService, http_gate};
use http::{HeaderMap, StatusCode};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::json;
use tokio_rustls::rustls::{
    self, RootCertStore,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};

use super::{
    accept::Peer,
    kube::{KubeApi, KubeApiConfig},
    tls::certificates,
};

/// kubelet's `--authentication-token-webhook-cache-ttl` default.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(120);
/// How long a token the API server rejected stays rejected without asking again.
pub const REJECTED_TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);
/// kubelet's `--authorization-webhook-cache-authorized-ttl` default.
pub const AUTHORIZED_CACHE_TTL: Duration = Duration::from_secs(300);
/// kubelet's `--authorization-webhook-cache-unauthorized-ttl` default.
pub const UNAUTHORIZED_CACHE_TTL: Duration = Duration::from_secs(30);
/// Entries per cache; past it expired entries go, and if none had, all do.
const CACHE_ENTRIES: usize = 4096;

const REMOTE_USER: &str = "x-remote-user";
const REMOTE_GROUP: &str = "x-remote-group";
const REMOTE_EXTRA: &str = "x-remote-extra-";

/// How authenticated callers are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthorizationMode {
    /// Every authenticated caller may read everything.
    #[default]
    #[value(name = "AlwaysAllow", alias = "always-allow")]
    AlwaysAllow,
    /// A SubjectAccessReview per request attributes (kubelet's Webhook mode).
    #[value(name = "Webhook", alias = "webhook")]
    Webhook,
}

/// The front-proxy (request header) authenticator of an APIService backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontProxy {
    /// CA of the API server's front-proxy client certificate (`requestheader-client-ca-file`).
    pub ca: PathBuf,
    /// Common names the front-proxy certificate may have (`requestheader-allowed-names`);
    /// empty allows any certificate of the CA.
    pub allowed_names: Vec<String>,
}

/// What to authenticate callers with, and how to authorize them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// Client certificates signed by this CA authenticate (the TLS `--tls-client-ca`).
    pub client_ca: Option<PathBuf>,
    /// Bearer tokens authenticate through TokenReview.
    pub token_webhook: bool,
    /// The aggregation layer's front proxy authenticates with its certificate and headers.
    pub front_proxy: Option<FrontProxy>,
    pub authorization: AuthorizationMode,
    /// The API server for TokenReview and SubjectAccessReview.
    pub kube: KubeApiConfig,
}

impl AuthSettings {
    /// Whether any authenticator is configured (then every non-health request needs one).
    pub fn enabled(&self) -> bool {
        self.client_ca.is_some() || self.token_webhook || self.front_proxy.is_some()
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request does, as Kubernetes authorizes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: &'static str,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Resource {
        group: &'static str,
        resource: &'static str,
        subresource: &'static str,
        name: String,
        namespace: String,
    },
    /// A non-resource URL.
    Path(String),
}

impl std::fmt::Display for Attributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Resource {
                group,
                resource,
                subresource,
                name,
                namespace,
            } => {
                write!(f, "verb={}, resource={resource}", self.verb)?;
                if !group.is_empty() {
                    write!(f, ".{group}")?;
                }
                if !subresource.is_empty() {
                    write!(f, ", subresource={subresource}")?;
                }
                if !namespace.is_empty() {
                    write!(f, ", namespace={namespace}")?;
                }
                if !name.is_empty() {
                    write!(f, ", name={name}")?;
                }
                Ok(())
            }
            Target::Path(path) => write!(f, "verb={}, path={path}", self.verb),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("Unauthorized: {0}")]
    Unauthenticated(String),
    #[error("Forbidden ({0})")]
    Forbidden(String),
    /// The API server could not be asked; the caller is refused, not let in.
    #[error("cannot check the caller's access now: {0}")]
    Unavailable(String),
}

impl Denied {
    pub fn grpc_status(&self) -> tonic::Status {
        match self {
            Denied::Unauthenticated(_) => tonic::Status::unauthenticated(self.to_string()),
            Denied::Forbidden(_) => tonic::Status::permission_denied(self.to_string()),
            Denied::Unavailable(_) => tonic::Status::unavailable(self.to_string()),
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Denied::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Denied::Forbidden(_) => StatusCode::FORBIDDEN,
            Denied::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{what}: {why}")]
    Ca { what: PathBuf, why: String },
    #[error("{0}")]
    Kube(#[from] super::kube::KubeError),
    #[error(
        "--authorization-mode Webhook needs an authenticator (--tls-client-ca, \
         --authentication-token-webhook or the front proxy)"
    )]
    NothingToAuthorize,
}

/// A map with a time to live per entry and a bounded size.
struct TtlCache<V> {
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(expires, _)| *expires > Instant::now())
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, key: String, value: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now() + ttl, value));
    }
}

/// The authenticators and the authorizer of one server.
pub struct Auth {
    enabled: bool,
    front_proxy: Option<(Arc<dyn ClientCertVerifier>, Vec<String>)>,
    token_webhook: bool,
    authorization: AuthorizationMode,
    kube: Option<Arc<KubeApi>>,
    tokens: TtlCache<Result<Identity, String>>,
    decisions: TtlCache<Result<(), String>>,
}

fn verifier(ca: &std::path::Path) -> Result<Arc<dyn ClientCertVerifier>, AuthError> {
    let fail = |why: String| AuthError::Ca {
        what: ca.to_owned(),
        why,
    };
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca).map_err(|e| fail(e.to_string()))? {
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| fail(e.to_string()))
}

impl Auth {
    /// No authentication: every caller may do everything (loopback and trusted networks).
    pub fn off() -> Arc<Self> {
        Arc::new(Self {
            enabled: false,
            front_proxy: None,
            token_webhook: false,
            authorization: AuthorizationMode::AlwaysAllow,
            kube: None,
            tokens: TtlCache::new(),
            decisions: TtlCache::new(),
        })
    }

    pub fn new(settings: &AuthSettings) -> Result<Arc<Self>, AuthError> {
        if !settings.enabled() {
            if settings.authorization == AuthorizationMode::Webhook {
                return Err(AuthError::NothingToAuthorize);
            }
            return Ok(Self::off());
        }
        let front_proxy = settings
            .front_proxy
            .as_ref()
            .map(|fp| Ok::<_, AuthError>((verifier(&fp.ca)?, fp.allowed_names.clone())))
            .transpose()?;
        let needs_api =
            settings.token_webhook || settings.authorization == AuthorizationMode::Webhook;
        let kube = if needs_api {
            Some(KubeApi::new(&settings.kube)?)
        } else {
            None
        };
        Ok(Arc::new(Self {
            enabled: true,
            front_proxy,
            token_webhook: settings.token_webhook,
            authorization: settings.authorization,
            kube,
            tokens: TtlCache::new(),
            decisions: TtlCache::new(),
        }))
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who is calling: the first authenticator that recognises the request.
    pub async fn authenticate(
        &self,
        peer: Option<&Peer>,
        headers: &HeaderMap,
    ) -> Result<Identity, Denied> {
        if let Some(certs) = peer.and_then(|p| p.certs.as_deref())
            && let Some((leaf, intermediates)) = certs.split_first()
        {
            if let Some((verifier, allowed)) = &self.front_proxy
                && verifier
                    .verify_client_cert(leaf, intermediates, UnixTime::now())
                    .is_ok()
            {
                let (cn, _) = subject(leaf);
                if !allowed.is_empty() && !allowed.iter().any(|a| Some(a) == cn.as_ref()) {
                    return Err(Denied::Unauthenticated(format!(
                        "front-proxy certificate {cn:?} is not one of the allowed names"
                    )));
                }
                return remote_user(headers);
            }
            // rustls verified the chain against the client CA (or the front proxy's, handled
            // above) during the handshake: the certificate names the caller.
            let (cn, groups) = subject(leaf);
            let user = cn
                .filter(|u| !u.is_empty())
                .ok_or_else(|| Denied::Unauthenticated("client certificate without a CN".into()))?;
            return Ok(Identity {
                user,
                groups,
                extra: BTreeMap::new(),
            });
        }
        if self.token_webhook
            && let Some(token) = bearer(headers)
        {
            return self.review_token(token).await;
        }
        Err(Denied::Unauthenticated(
            "no client certificate or bearer token".into(),
        ))
    }

    async fn review_token(&self, token: &str) -> Result<Identity, Denied> {
        if let Some(cached) = self.tokens.get(token) {
            return cached.map_err(Denied::Unauthenticated);
        }
        let kube = self.kube.as_ref().ok_or_else(|| {
            Denied::Unavailable("no Kubernetes API configured for TokenReview".into())
        })?;
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        });
        let answer = kube
            .post("/apis/authentication.k8s.io/v1/tokenreviews", &review)
            .await
            .map_err(|e| Denied::Unavailable(e.to_string()))?;
        let status = &answer["status"];
        let result = if status["authenticated"] == true {
            let user = &status["user"];
            let strings = |v: &serde_json::Value| -> Vec<String> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            Ok(Identity {
                user: user["username"].as_str().unwrap_or_default().to_owned(),
                groups: strings(&user["groups"]),
                extra: user["extra"]
                    .as_object()
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
                    .unwrap_or_default(),
            })
        } else {
            Err(format!(
                "token rejected{}",
                status["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ))
        };
        let ttl = if result.is_ok() {
            TOKEN_CACHE_TTL
        } else {
            REJECTED_TOKEN_CACHE_TTL
        };
        self.tokens.insert(token.to_owned(), result.clone(), ttl);
        result.map_err(Denied::Unauthenticated)
    }

    /// Whether `who` may do `what`.
    pub async fn authorize(&self, who: &Identity, what: &Attributes) -> Result<(), Denied> {
        if self.authorization == AuthorizationMode::AlwaysAllow {
            return Ok(());
        }
        let key = format!("{who:?}|{what:?}");
        if let Some(cached) = self.decisions.get(&key) {
            return cached.map_err(Denied::Forbidden);
        }
        let kube = self.kube.as_ref().ok_or_else(|| {
            Denied::Unavailable("no Kubernetes API configured for SubjectAccessReview".into())
        })?;
        let mut spec = json!({
            "user": who.user,
            "groups": who.groups,
            "extra": who.extra,
        });
        match &what.target {
            Target::Resource {
                group,
                resource,
                subresource,
                name,
                namespace,
            } => {
                spec["resourceAttributes"] = json!({
                    "verb": what.verb, "group": group, "resource": resource,
                    "subresource": subresource, "name": name, "namespace": namespace,
                });
            }
            Target::Path(path) => {
                spec["nonResourceAttributes"] = json!({"verb": what.verb, "path": path});
            }
        }
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        });
        let answer = kube
            .post(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                &review,
            )
            .await
            .map_err(|e| Denied::Unavailable(e.to_string()))?;
        let result = if answer["status"]["allowed"] == true {
            Ok(())
        } else {
            Err(format!("user={}, {what}", who.user))
        };
        let ttl = if result.is_ok() {
            AUTHORIZED_CACHE_TTL
        } else {
            UNAUTHORIZED_CACHE_TTL
        };
        self.decisions.insert(key, result.clone(), ttl);
        result.map_err(Denied::Forbidden)
    }

    /// Authenticates and authorizes every one of `attributes`.
    pub async fn check(
        &self,
        peer: Option<&Peer>,
        headers: &HeaderMap,
        attributes: &[Attributes],
    ) -> Result<Identity, Denied> {
        let who = self.authenticate(peer, headers).await?;
        for what in attributes {
            self.authorize(&who, what).await?;
        }
        Ok(who)
    }
}

/// The CN and the organizations of a certificate's subject.
fn subject(cert: &CertificateDer<'_>) -> (Option<String>, Vec<String>) {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return (None, Vec::new());
    };
    let subject = parsed.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let groups = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect();
    (cn, groups)
}

/// The user the front proxy authenticated, from its headers.
fn remote_user(headers: &HeaderMap) -> Result<Identity, Denied> {
    let text = |v: &http::HeaderValue| v.to_str().ok().map(str::to_owned);
    let user = headers
        .get(REMOTE_USER)
        .and_then(text)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Denied::Unauthenticated("front-proxy request without X-Remote-User".into())
        })?;
    let groups = headers
        .get_all(REMOTE_GROUP)
        .iter()
        .filter_map(text)
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(REMOTE_EXTRA)
            && let Some(v) = text(value)
        {
            extra.entry(key.to_owned()).or_default().push(v);
        }
    }
    Ok(Identity {
        user,
        groups,
        extra,
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    (!token.trim().is_empty()).then(|| token.trim())
}

/// The Kubernetes verb of an HTTP method.
pub fn verb(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "get",
    }
}
