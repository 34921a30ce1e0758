//! Where authentication meets the servers: a tower layer in front of a tonic server's services
//! and an axum middleware, both asking [`Auth`] what a request's attributes need.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use serde_json::json;

use super::{Attributes, Auth, Denied};
use crate::net::accept::Peer;

/// What a request to a server needs: `None` for public paths (health).
pub type AttributesOf = Arc<dyn Fn(&http::Method, &str) -> Option<Vec<Attributes>> + Send + Sync>;

/// The gRPC side: a tower layer in front of every service of a tonic server.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
    attributes: AttributesOf,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>, attributes: AttributesOf) -> Self {
        Self { auth, attributes }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<Request<tonic::body::Body>> for AuthService<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<tonic::body::Body>) -> Self::Future {
        let needed = if self.layer.auth.enabled() {
            (self.layer.attributes)(request.method(), request.uri().path())
        } else {
            None
        };
        let Some(needed) = needed else {
            return Box::pin(self.inner.call(request));
        };
        // The clone that was made ready is the one to call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.layer.auth.clone();
        Box::pin(async move {
            let peer = request.extensions().get::<Peer>().cloned();
            match auth.check(peer.as_ref(), request.headers(), &needed).await {
                Ok(who) => {
                    request.extensions_mut().insert(who);
                    inner.call(request).await
                }
                Err(denied) => {
                    tracing::debug!(path = %request.uri().path(), "refused: {denied}");
                    Ok(denied.grpc_status().into_http())
                }
            }
        })
    }
}

/// The HTTP side: an axum middleware (`axum::middleware::from_fn_with_state`).
pub async fn http_gate(
    axum::extract::State((auth, attributes)): axum::extract::State<(Arc<Auth>, AttributesOf)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !auth.enabled() {
        return next.run(request).await;
    }
    let Some(needed) = attributes(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    match auth.check(peer.as_ref(), request.headers(), &needed).await {
        Ok(_) => next.run(request).await,
        Err(denied) => {
            tracing::debug!(path = %request.uri().path(), "refused: {denied}");
            let code = denied.http_status();
            // A Kubernetes Status, as the API server (and kubectl's error messages) expect.
            let reason = match denied {
                Denied::Unauthenticated(_) => "Unauthorized",
                Denied::Forbidden(_) => "Forbidden",
                Denied::Unavailable(_) => "ServiceUnavailable",
            };
            let status = json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": denied.to_string(),
                "reason": reason,
                "code": code.as_u16(),
            });
            (code, axum::Json(status)).into_response()
        }
    }
}
