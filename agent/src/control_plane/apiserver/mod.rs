//! `windlass server`'s API server: Kubernetes REST over HTTPS for real clients (kubectl,
//! kube-rs, the Python client), backed by a [`crate::control_plane::store::Store`].
//!
//! - [`pki`]: CA, serving certificate, tokens, `admin.kubeconfig`.
//! - [`resources`]: the served kinds, validation and defaults; [`handlers`]: the verbs;
//!   [`watch`]: watch streams; [`patch`]: the patch types; [`selectors`]; [`table`]: server-side
//!   printing; [`discovery`]; [`status`]: `metav1.Status` errors; [`serve`]: TLS.

pub mod auth;
pub mod bootstrap;
pub mod discovery;
pub mod handlers;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod pod_log;
pub mod protobuf;

pub mod resources;
pub mod selectors;
pub mod serve;
pub mod status;
pub mod table;
pub mod watch;
pub mod watch_cache;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use self::handlers::{Api, ServiceRanges, Target};
use self::status::ApiError;
use crate::control_plane::store::Store;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Credentials could not be made or loaded.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] serve::TlsError),
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store failed at start-up.
    #[error(transparent)]
    Store(#[from] crate::control_plane::store::StoreError),
    /// Bootstrap objects could not be created.
    #[error("failed to create bootstrap object {what}: {message}")]
    Bootstrap {
        /// Which object.
        what: String,
        /// The API's answer.
        message: String,
    },
}

/// What the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where credentials and the embedded store live.
    pub data_dir: PathBuf,
    /// The HTTPS listen address.
    pub listen: SocketAddr,
    /// Service address ranges.
    pub ranges: ServiceRanges,
    /// How often history is compacted (to the revision seen one interval before), as
    /// kube-apiserver does every 5 minutes.
    pub compaction_interval: std::time::Duration,
    /// The controllers to run alongside (as kube-controller-manager would), or none.
    pub controllers: Option<crate::control_plane::controllers::ControllerOptions>,
    /// The address pods reach the API server at (the `kubernetes` Service's endpoint); derived
    /// from the listen address when unset.
    pub advertise: Option<std::net::IpAddr>,
}

/// Compacts the store every `interval` to the revision it had one interval earlier, so watches
/// and continue tokens younger than one interval always work and history stays bounded.
async fn compact_periodically(
    store: Arc<dyn Store>,
    caches: Arc<watch_cache::WatchCaches>,
    interval: std::time::Duration,
) {
    let mut previous = None;
    loop {
        tokio::time::sleep(interval).await;
        let current = match store.current_revision().await {
            Ok(rev) => rev,
            Err(e) => {
                tracing::warn!(error = %e, "compaction: cannot read the current revision");
                continue;
            }
        };
        if let Some(rev) = previous.filter(|r| *r > 0) {
            match store.compact(rev).await {
                Ok(()) => {
                    caches.compacted(rev);
                    tracing::debug!(revision = rev, "compacted history");
                }
                Err(crate::control_plane::store::StoreError::Compacted { .. }) => {}
                Err(e) => tracing::warn!(revision = rev, error = %e, "compaction failed"),
            }
        }
        previous = Some(current);
    }
}

#[derive(Clone)]
struct AppState {
    api: Api,
    auth: auth::Authenticator,
    ca_pem: Arc<str>,
    server_address: Arc<str>,
    kubelet_client: pod_log::KubeletClient,
}

/// Where a request path points.
#[derive(Debug)]
enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    ResourceList(String, String),
    Metrics,
    Join,
    CaCerts,
    Resource(Target, bool),
    /// `pods/{name}/log`: proxied to the pod's kubelet ([`pod_log`]).
    PodLog(String, String),
    OpenApi,
}

/// Parses a request path.
fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segments.as_slice() {
        ["version"] => return Some(Route::Version),
        ["healthz" | "livez" | "readyz", ..] => return Some(Route::Health),
        ["openapi", ..] => return Some(Route::OpenApi),
        ["metrics"] => return Some(Route::Metrics),
        ["windlass", "v1", "join"] => return Some(Route::Join),
        ["cacerts"] => return Some(Route::CaCerts),
        ["api"] => return Some(Route::CoreVersions),
        ["apis"] => return Some(Route::Groups),
        ["apis", group] => return Some(Route::Group((*group).to_string())),
        ["api", "v1", "namespaces", ns, "pods", name, "log"] => {
            return Some(Route::PodLog((*ns).to_string(), (*name).to_string()));
        }
        _ => {}
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    if rest.is_empty() {
        return Some(Route::ResourceList(group.to_string(), version.to_string()));
    }
    let (watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let find = |plural: &str| resources::find(group, version, plural);
    let target =
        |resource, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
            resource,
            namespace: namespace.map(String::from),
            name: name.map(String::from),
            subresource: sub.map(String::from),
        };
    let t = match rest {
        ["namespaces", ns, plural] if find(plural).is_some_and(|r| r.namespaced) => {
            target(find(plural)?, Some(ns), None, None)
        }
        ["namespaces", ns, plural, name] if find(plural).is_some_and(|r| r.namespaced) => {
            target(find(plural)?, Some(ns), Some(name), None)
        }
        ["namespaces", ns, plural, name, sub] if find(plural).is_some_and(|r| r.namespaced) => {
            let r = find(plural)?;
            r.has_subresource(sub).then_some(())?;
            target(r, Some(ns), Some(name), Some(sub))
        }
        [plural] => target(find(plural)?, None, None, None),
        [plural, name] => target(find(plural)?, None, Some(name), None),
        [plural, name, sub] => {
            let r = find(plural)?;
            (!r.namespaced && r.has_subresource(sub)).then_some(())?;
            target(r, None, Some(name), Some(sub))
        }
        _ => return None,
    };
    if t.name.is_some() && !t.resource.namespaced && t.namespace.is_some() {
        return None;
    }
    Some(Route::Resource(t, watch))
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The join step: a node presenting the node-join token gets its own `system:node:<name>`
/// token, as a kubeconfig pointing at the address it reached this server by.
async fn join(state: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<Response, ApiError> {
    if !state.auth.is_join_token(bearer(headers)) {
        return Err(ApiError::unauthorized());
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid join request: {e}")))?;
    let node = request
        .get("node")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("the join request needs \"node\""))?;
    let token = state.auth.issue_node_token(&state.api.store, node).await?;
    let server = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("https://{h}"))
        .unwrap_or_else(|| format!("https://{}", state.server_address));
    let kubeconfig = pki::kubeconfig(
        &server,
        &state.ca_pem,
        &format!("system:node:{node}"),
        &token,
    );
    tracing::info!(node, "node joined");
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        kubeconfig,
    )
        .into_response())
}

async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    QueryParams(query): QueryParams<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let path = uri.path().to_string();
    let result = handle(&state, &method, &path, &headers, &query, &body).await;
    let response = match result {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    tracing::debug!(%method, path, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    response
}

async fn handle(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let route = route(path).ok_or_else(ApiError::no_route)?;
    match route {
        Route::Health => return Ok((StatusCode::OK, "ok").into_response()),
        Route::Version => return Ok(json_response(StatusCode::OK, &discovery::version())),
        Route::Join if method == Method::POST => return join(state, headers, body).await,
        // Public, like k3s's: a joining node checks it against the hash in its join token.
        Route::CaCerts => {
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-pem-file")],
                state.ca_pem.to_string(),
            )
                .into_response());
        }
        _ => {}
    }
    let user = state.auth.authenticate(bearer(headers))?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let (Route::CoreVersions | Route::Groups, Some(version)) =
        (&route, discovery::wants_aggregated(accept))
    {
        let document = discovery::aggregated(matches!(route, Route::CoreVersions), version);
        return Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                discovery::aggregated_content_type(version),
            )],
            document.to_string(),
        )
            .into_response());
    }
    match route {
        Route::CoreVersions => Ok(json_response(
            StatusCode::OK,
            &discovery::core_versions(&state.server_address),
        )),
        Route::Groups => Ok(json_response(StatusCode::OK, &discovery::group_list())),
        Route::Group(g) => discovery::group(&g)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(ApiError::no_route),
        Route::ResourceList(g, v) => discovery::resource_list(&g, &v)
            .map(|list| json_response(StatusCode::OK, &list))
            .ok_or_else(ApiError::no_route),
        Route::OpenApi if path.trim_end_matches('/') == "/openapi/v2" => {
            let document = openapi::document(&serde_json::json!({}));
            if accept.contains("protobuf") {
                Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, openapi::PROTOBUF_MEDIA_TYPE)],
                    openapi::to_protobuf(&document),
                )
                    .into_response())
            } else {
                Ok(json_response(StatusCode::OK, &document))
            }
        }
        Route::OpenApi => Err(ApiError::no_route()),
        Route::Metrics => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            state.api.caches.metrics(),
        )
            .into_response()),
        Route::PodLog(namespace, name) if method == Method::GET => {
            let target = Target {
                resource: resources::find("", "v1", "pods").ok_or_else(ApiError::no_route)?,
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                subresource: Some("log".into()),
            };
            auth::authorize(&state.api, &user, "get", &target, body).await?;
            pod_log::pod_log(&state.api, &state.kubelet_client, &namespace, &name, query).await
        }
        Route::PodLog(..) => Err(ApiError::method_not_allowed(method.as_str())),
        Route::Resource(target, watch_path) => {
            resource(
                state, &user, method, target, watch_path, query, headers, accept, body,
            )
            .await
        }
        Route::Health | Route::Version | Route::Join | Route::CaCerts => Err(ApiError::no_route()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    state: &AppState,
    user: &auth::User,
    method: &Method,
    target: Target,
    watch_path: bool,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    accept: &str,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let api = &state.api;
    let as_table = table::wants_table(accept);
    let watching = watch_path || query.get("watch").is_some_and(|w| w == "true" || w == "1");
    auth::authorize(
        api,
        user,
        auth::verb(method, &target, watching),
        &target,
        body,
    )
    .await?;
    let kind = target.resource.kind;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parse_body = || -> Result<Value, ApiError> {
        // Bodies are JSON, or protobuf for built-in kinds (kubectl >= 1.31 sends its typed
        // creates as protobuf and does not fall back to JSON); protobuf of a kind the decoder does
        // not know, and CBOR, are refused with 415.
        let media = content_type.split(';').next().unwrap_or("").trim();
        if media == protobuf::MEDIA_TYPE {
            return protobuf::decode(body).map_err(|e| {
                ApiError::unsupported_media_type(&format!("{media}, which failed to decode: {e}"))
            });
        }
        if !media.is_empty() && media != "application/json" && !media.ends_with("+json") {
            return Err(ApiError::unsupported_media_type(media));
        }
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    };
    let render_one = |object: Value| -> Value {
        if as_table && target.subresource.is_none() {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            table::table(kind, std::slice::from_ref(&object), &rv, None, true)
        } else {
            object
        }
    };
    match (method.clone(), target.name.is_some()) {
        (Method::GET, _) if watching => {
            let body = watch::watch(api, &target, query, as_table).await?;
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-cache, private")
                .body(body)
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
        }
        (Method::GET, false) if as_table => {
            let now = jiff::Timestamp::now();
            let mut rows = Vec::new();
            let meta = api
                .list_each(&target, query, &mut |object| {
                    rows.push(table::row(kind, &object, now));
                    Ok(())
                })
                .await?;
            let table = table::from_rows(
                kind,
                rows,
                &meta.revision.to_string(),
                meta.continue_token.as_deref(),
                true,
            );
            Ok(json_response(StatusCode::OK, &table))
        }
        (Method::GET, false) => {
            let mut items = Vec::with_capacity(64 * 1024);
            let meta = api
                .list_each(&target, query, &mut |object| {
                    if !items.is_empty() {
                        items.push(b',');
                    }
                    serde_json::to_writer(&mut items, &object)
                        .map_err(|e| ApiError::internal(e.to_string()))
                })
                .await?;
            let body = api.list_json(&target, &meta, &items);
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response())
        }
        (Method::GET, true) => Ok(json_response(
            StatusCode::OK,
            &render_one(api.get(&target).await?),
        )),
        (Method::POST, false) => {
            let created = api.create(&target, parse_body()?).await?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::POST, true) if target.subresource.as_deref() == Some("binding") => {
            let bound = api.create(&target, parse_body()?).await?;
            Ok(json_response(StatusCode::CREATED, &bound))
        }
        (Method::PUT, true) => Ok(json_response(
            StatusCode::OK,
            &api.update(&target, parse_body()?).await?,
        )),
        (Method::PATCH, true) => Ok(json_response(
            StatusCode::OK,
            &api.patch(&target, content_type, body).await?,
        )),
        (Method::DELETE, true) => Ok(json_response(
            StatusCode::OK,
            &api.delete(&target, query, body).await?,
        )),
        (Method::DELETE, false) if target.resource.kind != "Namespace" => Ok(json_response(
            StatusCode::OK,
            &api.delete_collection(&target, query, body).await?,
        )),
        (other, _) => Err(ApiError::method_not_allowed(other.as_str())),
    }
}

/// A running API server.
#[derive(Debug)]
pub struct RunningServer {
    /// Where `admin.kubeconfig` was written.
    pub kubeconfig: PathBuf,
    /// The bound address.
    pub addr: SocketAddr,
    /// Where the node join token (`K10<CA hash>::<secret>`) was written.
    pub node_token: PathBuf,
}

/// Starts serving with `store` until `shutdown` resolves; `on_ready` is called once the server
/// accepts connections.
pub async fn run(
    options: ServerOptions,
    store: Arc<dyn Store>,
    on_ready: impl FnOnce(&RunningServer),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: options.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: options.listen,
            source,
        })?;
    let advertise = options
        .advertise
        .unwrap_or_else(|| bootstrap::advertise_address(addr));
    let credentials = pki::ensure(&options.data_dir, addr, advertise)?;
    let tls = serve::tls_config(&credentials)?;
    let api = Api {
        store,
        ranges: options.ranges,
        caches: Default::default(),
    };
    bootstrap::namespaces(&api).await?;
    bootstrap::services(&api, advertise, addr.port()).await;
    // Start every resource's watch cache now, as kube-apiserver does, so its window covers
    // everything written since start-up: a client that lists and then watches from that list's
    // revision is served from the cache, never from a direct store watch.
    for resource in resources::RESOURCES {
        api.caches.get(&resource.key_prefix(None), &api.store);
    }
    tokio::spawn(compact_periodically(
        api.store.clone(),
        api.caches.clone(),
        options.compaction_interval,
    ));
    // Before admin.kubeconfig, whose appearance tells scripts the server is ready.
    let node_token = pki::write_node_token(
        &options.data_dir,
        &credentials.ca_pem,
        &credentials.node_join_token,
    )?;
    let kubeconfig = pki::write_admin_kubeconfig(&options.data_dir, addr, &credentials)?;
    let auth = auth::Authenticator::load(
        &api.store,
        &credentials.admin_token,
        &credentials.node_join_token,
    )
    .await?;
    let state = AppState {
        api,
        auth,
        ca_pem: credentials.ca_pem.clone().into(),
        server_address: addr.to_string().into(),
        kubelet_client: pod_log::KubeletClient::new(&credentials),
    };
    let app = Router::new().fallback(dispatch).with_state(state);
    if let Some(controller_options) = options.controllers.clone() {
        // The controllers talk to this server through the API, like any client, with the admin
        // kubeconfig; the listener is bound already, so their first requests wait for serve().
        let path = kubeconfig.clone();
        tokio::spawn(async move {
            match crate::control_plane::controllers::client_from_kubeconfig(&path).await {
                Ok(client) => {
                    crate::control_plane::controllers::run_all(client, controller_options).await
                }
                Err(e) => {
                    tracing::error!(error = %e, "controllers cannot build a client; not started")
                }
            }
        });
    }
    on_ready(&RunningServer {
        kubeconfig,
        addr,
        node_token,
    });
    serve::serve(listener, tls, app, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> (Target, bool) {
        match route(path) {
            Some(Route::Resource(t, w)) => (t, w),
            other => panic!("{path} -> {other:?}"),
        }
    }

    #[test]
    fn paths_route_like_kube_apiserver() {
        let (t, _) = target("/api/v1/namespaces/default/pods/web-0");
        assert_eq!(
            (t.resource.plural, t.namespace.as_deref(), t.name.as_deref()),
            ("pods", Some("default"), Some("web-0"))
        );
        let (t, _) = target("/api/v1/namespaces/default/pods/web-0/status");
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let (t, _) = target("/api/v1/namespaces/kube-system");
        assert_eq!(
            (t.resource.plural, t.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let (t, _) = target("/apis/apps/v1/namespaces/x/deployments/d/scale");
        assert_eq!(
            (t.resource.kind, t.subresource.as_deref()),
            ("Deployment", Some("scale"))
        );
        let (t, w) = target("/api/v1/watch/namespaces/x/pods");
        assert!(w);
        assert_eq!(t.namespace.as_deref(), Some("x"));
        let (t, _) = target("/api/v1/pods");
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(route("/api/v1/namespaces/x/pods/p/exec-nope").is_none());
        assert!(route("/api/v1/widgets").is_none());
        assert!(matches!(
            route("/apis/apps/v1"),
            Some(Route::ResourceList(..))
        ));
    }
}
