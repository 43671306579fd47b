//! Who is asking and what they may do.
//!
//! Authentication: bearer tokens only. The admin token (from the data dir) is the cluster admin;
//! a node token, issued by the join step to a node that presents the node-join token, is the
//! user `system:node:<name>`. Tokens are kept as SHA-256 digests in the store
//! (`/registry/windlass/nodetokens/<node>`), so a store dump reveals none. Anything else is 401.
//!
//! Authorization for nodes follows kube-apiserver's Node authorizer and NodeRestriction
//! admission: a node reads what a kubelet needs, and writes only its own Node (and status), its
//! Lease in `kube-node-lease`, Events, and the status and deletion of pods bound to it (plus
//! mirror pods bound to it).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::http::Method;
use serde_json::{Value, json};

use super::handlers::{Api, Target};
use super::status::ApiError;
use crate::control_plane::store::{ListOptions, Store, StoreError};

/// Store prefix of node token digests.
const NODE_TOKENS: &str = "/registry/windlass/nodetokens/";

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// The cluster admin.
    Admin,
    /// A node's kubelet: `system:node:<name>`.
    Node(String),
}

impl User {
    /// The Kubernetes user name.
    pub fn name(&self) -> String {
        match self {
            User::Admin => "admin".to_string(),
            User::Node(node) => format!("system:node:{node}"),
        }
    }
}

fn digest(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Token checks: the admin and join tokens, and node token digests (loaded from the store).
#[derive(Clone)]
pub struct Authenticator {
    admin_digest: Arc<str>,
    join_digest: Arc<str>,
    /// digest -> node name
    nodes: Arc<RwLock<HashMap<String, String>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Loads the node tokens from `store`.
    pub async fn load(
        store: &Arc<dyn Store>,
        admin_token: &str,
        join_token: &str,
    ) -> Result<Self, StoreError> {
        let mut nodes = HashMap::new();
        for kv in store
            .list(NODE_TOKENS, &ListOptions::default())
            .await?
            .items
        {
            if let (Some(node), Ok(record)) = (
                kv.key.strip_prefix(NODE_TOKENS),
                serde_json::from_slice::<Value>(&kv.value),
            ) && let Some(d) = record.get("sha256").and_then(Value::as_str)
            {
                nodes.insert(d.to_string(), node.to_string());
            }
        }
        Ok(Authenticator {
            admin_digest: digest(admin_token).into(),
            join_digest: digest(join_token).into(),
            nodes: Arc::new(RwLock::new(nodes)),
        })
    }

    /// The user a bearer token belongs to.
    pub fn authenticate(&self, token: Option<&str>) -> Result<User, ApiError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(ApiError::unauthorized());
        };
        let d = digest(token);
        if constant_time_eq(d.as_bytes(), self.admin_digest.as_bytes()) {
            return Ok(User::Admin);
        }
        let nodes = self
            .nodes
            .read()
            .map_err(|_| ApiError::internal("token table poisoned"))?;
        nodes
            .get(&d)
            .map(|n| User::Node(n.clone()))
            .ok_or_else(ApiError::unauthorized)
    }

    /// Whether `token` is the node-join token.
    pub fn is_join_token(&self, token: Option<&str>) -> bool {
        token.is_some_and(|t| constant_time_eq(digest(t).as_bytes(), self.join_digest.as_bytes()))
    }

    /// Issues a new token for `node` (replacing any earlier one) and returns it.
    pub async fn issue_node_token(
        &self,
        store: &Arc<dyn Store>,
        node: &str,
    ) -> Result<String, ApiError> {
        if super::resources::check_name(node, super::resources::NameRule::Subdomain).is_some() {
            return Err(ApiError::bad_request(format!("invalid node name {node:?}")));
        }
        let token = super::pki::random_token().map_err(|e| ApiError::internal(e.to_string()))?;
        let d = digest(&token);
        let key = format!("{NODE_TOKENS}{node}");
        let record = serde_json::to_vec(&json!({ "sha256": d, "issued": super::handlers::now() }))
            .unwrap_or_default();
        let store_err = |e| ApiError::from_store(e, "windlass.dev", "nodetokens", node);
        loop {
            match store.get(&key).await.map_err(store_err)? {
                None => match store.create(&key, record.clone()).await {
                    Err(StoreError::AlreadyExists(_)) => continue,
                    other => {
                        other.map_err(store_err)?;
                        break;
                    }
                },
                Some(old) => match store.update(&key, record.clone(), old.mod_revision).await {
                    Err(StoreError::Conflict { .. }) => continue,
                    other => {
                        other.map_err(store_err)?;
                        break;
                    }
                },
            }
        }
        let mut nodes = self
            .nodes
            .write()
            .map_err(|_| ApiError::internal("token table poisoned"))?;
        nodes.retain(|_, n| n != node);
        nodes.insert(d, node.to_string());
        Ok(token)
    }
}

fn forbidden(user: &User, verb: &str, target: &Target) -> ApiError {
    let r = target.resource;
    let resource = match &target.subresource {
        Some(sub) => format!("{}/{sub}", r.plural),
        None => r.plural.to_string(),
    };
    let group = if r.group.is_empty() {
        "\"\"".to_string()
    } else {
        format!("\"{}\"", r.group)
    };
    let scope = match &target.namespace {
        Some(ns) if r.namespaced => format!(" in the namespace \"{ns}\""),
        _ => " at the cluster scope".to_string(),
    };
    let name = target
        .name
        .as_deref()
        .map(|n| format!("\"{n}\" "))
        .unwrap_or_default();
    ApiError::forbidden(format!(
        "{resource} {name}is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group {group}{scope}",
        user.name()
    ))
}

/// The Kubernetes verb of a request.
pub fn verb(method: &Method, target: &Target, watching: bool) -> &'static str {
    match (method.as_str(), target.name.is_some()) {
        ("GET", _) if watching => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// Decides whether `user` may do `verb` on `target`; `body` is the request body (for creates).
pub async fn authorize(
    api: &Api,
    user: &User,
    verb: &str,
    target: &Target,
    body: &[u8],
) -> Result<(), ApiError> {
    let node = match user {
        User::Admin => return Ok(()),
        User::Node(node) => node.as_str(),
    };
    let r = target.resource;
    let reading = matches!(verb, "get" | "list" | "watch");
    let allowed = match r.plural {
        // What a kubelet and the node's proxy read.
        "namespaces" | "services" | "endpoints" | "endpointslices" | "configmaps" | "secrets"
        | "serviceaccounts"
            if reading =>
        {
            true
        }
        "nodes" if reading => true,
        "nodes" => {
            target.name.as_deref() == Some(node)
                || (verb == "create" && body_name(body).as_deref() == Some(node))
        }
        "leases" => {
            target.namespace.as_deref() == Some("kube-node-lease")
                && (target.name.as_deref() == Some(node)
                    || (verb == "create" && body_name(body).as_deref() == Some(node))
                    || reading)
        }
        "events" => matches!(verb, "create" | "patch" | "update") || reading,
        "pods" if reading => true,
        "pods" => pod_write_allowed(api, node, verb, target, body).await?,
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(forbidden(user, verb, target))
    }
}

fn body_name(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(String::from)
}

/// Pods: a node changes the status of, and confirms the deletion of, pods bound to it, and
/// creates mirror pods (of its static pods) bound to itself.
async fn pod_write_allowed(
    api: &Api,
    node: &str,
    verb: &str,
    target: &Target,
    body: &[u8],
) -> Result<bool, ApiError> {
    if verb == "create" && target.subresource.is_none() {
        let pod: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mirror = pod
            .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some();
        let bound_here = pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
        return Ok(mirror && bound_here);
    }
    let Some(name) = target.name.as_deref() else {
        return Ok(false);
    };
    let writes_status =
        target.subresource.as_deref() == Some("status") && matches!(verb, "update" | "patch");
    if !writes_status && verb != "delete" {
        return Ok(false);
    }
    let pod_target = Target {
        subresource: None,
        ..target.clone()
    };
    match api.read(&pod_target, name).await {
        Ok((_, pod)) => Ok(pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)),
        // Let the handler answer 404 for a missing pod; there is nothing to protect.
        Err(e) if e.code == 404 => Ok(true),
        Err(e) => Err(e),
    }
}
