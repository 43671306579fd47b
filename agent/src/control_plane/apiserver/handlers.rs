//! The REST verbs over the store for every served resource: get, list (selectors, limit and
//! continue), create (generateName, defaults, validation, namespace lifecycle, Service IP and
//! NodePort allocation), update with optimistic concurrency, the three patch types, delete
//! (graceful for pods, finalizers, propagation policy) and the status and scale subresources.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use super::patch::{self, PatchKind};
use super::resources::{self, Resource};
use super::selectors::{FieldSelector, LabelSelector, match_labels_string};
use super::status::{ApiError, FieldCause};
use crate::control_plane::store::{KeyValue, ListOptions, Revision, Store, StoreError};

/// Where a request points.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub resource: &'static Resource,
    /// The namespace from the path (namespaced resources only).
    pub namespace: Option<String>,
    /// The object name, for object requests.
    pub name: Option<String>,
    /// The subresource (`status`, `scale`, `binding`), if any.
    pub subresource: Option<String>,
}

/// Query parameters of a request.
pub type Query = HashMap<String, String>;

/// Service address ranges the API server allocates from.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRanges {
    /// The ClusterIP range (default 10.96.0.0/16).
    pub cidr: (Ipv4Addr, u8),
    /// The NodePort range (default 30000-32767).
    pub node_ports: (u16, u16),
}

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges {
            cidr: (Ipv4Addr::new(10, 96, 0, 0), 16),
            node_ports: (30000, 32767),
        }
    }
}

/// The REST engine: resource handlers over a store.
#[derive(Clone)]
pub struct Api {
    /// The backing store.
    pub store: Arc<dyn Store>,
    /// Service ranges.
    pub ranges: ServiceRanges,
    /// Watch caches, one per resource.
    pub caches: Arc<super::watch_cache::WatchCaches>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("ranges", &self.ranges)
            .finish_non_exhaustive()
    }
}

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Object JSON from a stored value, with `metadata.resourceVersion` set from the store.
pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    }
    Ok(object)
}

/// Bytes to store: the object without `metadata.resourceVersion` (the store's revision is it).
fn encode(object: &Value) -> Vec<u8> {
    let mut copy = object.clone();
    if let Some(metadata) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("resourceVersion");
    }
    serde_json::to_vec(&copy).unwrap_or_default()
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object
        .pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
}

fn parse_revision(rv: &str) -> Result<Revision, ApiError> {
    rv.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))
}

/// A random suffix for generateName, from kube's alphabet (no vowels, no confusable digits).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// The continue token of a paged list: the snapshot revision and the last key returned.
fn encode_continue(revision: Revision, last_key: &str) -> String {
    let token = json!({ "v": "meta.k8s.io/v1", "rv": revision, "start": last_key });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(Revision, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let revision = value.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = value.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((revision, start.to_string()))
}

/// A parsed list request: selectors and paging.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
}

impl ListRequest {
    /// Parses `labelSelector` and `fieldSelector` for `resource`.
    pub fn parse(resource: &Resource, query: &Query) -> Result<Self, ApiError> {
        let labels =
            LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(
            query.get("fieldSelector").map(String::as_str).unwrap_or(""),
            resource.field_selectors,
        )
        .map_err(ApiError::bad_request)?;
        Ok(ListRequest { labels, fields })
    }

    /// Whether `object` is selected.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// What a list ends with: its revision and a continue token when more remain.
#[derive(Debug, Clone)]
pub struct ListMeta {
    /// The snapshot revision.
    pub revision: Revision,
    /// Token for the next page.
    pub continue_token: Option<String>,
}

impl Api {
    fn namespace_of<'a>(&self, target: &'a Target) -> Option<&'a str> {
        if target.resource.namespaced {
            target.namespace.as_deref()
        } else {
            None
        }
    }

    fn name<'a>(&self, target: &'a Target) -> Result<&'a str, ApiError> {
        target
            .name
            .as_deref()
            .ok_or_else(|| ApiError::method_not_allowed("this verb needs an object name"))
    }

    fn key(&self, target: &Target, name: &str) -> String {
        target.resource.key(self.namespace_of(target), name)
    }

    fn store_error(&self, target: &Target, name: &str) -> impl FnOnce(StoreError) -> ApiError {
        let (group, plural, name) = (
            target.resource.group,
            target.resource.plural,
            name.to_string(),
        );
        move |e| ApiError::from_store(e, group, plural, &name)
    }

    /// Reads one object with its store record.
    pub async fn read(&self, target: &Target, name: &str) -> Result<(KeyValue, Value), ApiError> {
        let r = target.resource;
        let kv = self
            .store
            .get(&self.key(target, name))
            .await
            .map_err(self.store_error(target, name))?
            .ok_or_else(|| ApiError::not_found(r.group, r.plural, name))?;
        let object = decode(&kv)?;
        Ok((kv, object))
    }

    /// GET of one object (or its scale subresource).
    pub async fn get(&self, target: &Target) -> Result<Value, ApiError> {
        let name = self.name(target)?;
        let (_, object) = self.read(target, name).await?;
        match target.subresource.as_deref() {
            Some("scale") => Ok(scale_of(&object)),
            _ => Ok(object),
        }
    }

    /// LIST with selectors, `limit` and `continue`, handing each selected object to `each` as
    /// it is decoded, so a large list never holds every decoded object at once.
    pub async fn list_each(
        &self,
        target: &Target,
        query: &Query,
        each: &mut (dyn FnMut(Value) -> Result<(), ApiError> + Send),
    ) -> Result<ListMeta, ApiError> {
        let r = target.resource;
        let request = ListRequest::parse(r, query)?;
        let namespace = self.namespace_of(target).or(if r.namespaced {
            request.fields.namespace()
        } else {
            None
        });
        let prefix = r.key_prefix(namespace);
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let (mut revision, mut start_after) = match query.get("continue").filter(|c| !c.is_empty())
        {
            Some(token) => {
                let (rev, start) = decode_continue(token)?;
                (Some(rev), Some(start))
            }
            None => {
                let rv = query
                    .get("resourceVersion")
                    .filter(|v| !v.is_empty() && *v != "0");
                let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
                (
                    if exact {
                        rv.map(|v| parse_revision(v)).transpose()?
                    } else {
                        None
                    },
                    None,
                )
            }
        };
        let mut count = 0;
        loop {
            let page = self
                .store
                .list(
                    &prefix,
                    &ListOptions {
                        revision,
                        start_after: start_after.clone(),
                        limit: limit.map(|l| l.max(64)),
                    },
                )
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if query.contains_key("continue") => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ),
                    other => ApiError::from_store(other, r.group, r.plural, ""),
                })?;
            revision = Some(page.revision);
            let page_last = page.items.last().map(|kv| kv.key.clone());
            let page_more = page.more;
            let mut last_key = None;
            for kv in page.items {
                let object = decode(&kv)?;
                if request.matches(&object) {
                    each(object)?;
                    count += 1;
                    if limit.is_some_and(|l| count == l) {
                        let more = page_more || Some(&kv.key) != page_last.as_ref();
                        return Ok(ListMeta {
                            revision: page.revision,
                            continue_token: more.then(|| encode_continue(page.revision, &kv.key)),
                        });
                    }
                }
                last_key = Some(kv.key);
            }
            if !page_more {
                break;
            }
            start_after = last_key;
        }
        Ok(ListMeta {
            revision: revision.unwrap_or_default(),
            continue_token: None,
        })
    }

    /// The `<Kind>List` JSON for a list, with `items` already serialized (comma-separated).
    pub fn list_json(&self, target: &Target, meta: &ListMeta, items: &[u8]) -> Vec<u8> {
        let r = target.resource;
        let mut metadata = json!({ "resourceVersion": meta.revision.to_string() });
        if let Some(token) = &meta.continue_token {
            metadata["continue"] = json!(token);
        }
        let head = json!({ "kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": metadata });
        let mut out = head.to_string().into_bytes();
        out.pop(); // the closing brace; items follow
        out.reserve(items.len() + 16);
        out.extend_from_slice(br#","items":["#);
        out.extend_from_slice(items);
        out.extend_from_slice(b"]}");
        out
    }

    /// CREATE (POST to a collection, or a pod's binding).
    pub async fn create(&self, target: &Target, mut object: Value) -> Result<Value, ApiError> {
        let r = target.resource;
        if target.subresource.as_deref() == Some("binding") {
            return self.bind(target, object).await;
        }
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        self.check_type(r, &mut object)?;
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        if r.namespaced {
            let ns = target
                .namespace
                .clone()
                .or_else(|| meta_str(&object, "namespace").map(String::from))
                .unwrap_or_else(|| "default".to_string());
            if let Some(body_ns) = meta_str(&object, "namespace")
                && body_ns != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            object["metadata"]["namespace"] = json!(ns);
            self.check_namespace_open(&ns).await?;
        } else if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let generate = meta_str(&object, "generateName").map(String::from);
        let explicit = meta_str(&object, "name")
            .filter(|n| !n.is_empty())
            .map(String::from);
        if explicit.is_none() && generate.is_none() {
            return Err(ApiError::invalid(
                r.kind,
                r.group,
                "",
                vec![FieldCause {
                    reason: "FieldValueRequired",
                    field: "metadata.name".into(),
                    message: "Required value: name or generateName is required".into(),
                }],
            ));
        }
        resources::apply_defaults(r, &mut object);
        {
            let m = object["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::internal("metadata"))?;
            for field in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(field);
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now()));
            if r.has_spec {
                m.insert("generation".into(), json!(1));
            }
        }
        for attempt in 0..8 {
            // Either a name, or generateName plus a fresh suffix (both missing was refused above).
            let name = explicit.clone().unwrap_or_else(|| {
                format!(
                    "{}{}",
                    generate.as_deref().unwrap_or_default(),
                    random_suffix()
                )
            });
            object["metadata"]["name"] = json!(name);
            self.validate(r, &name, &object)?;
            let allocated = if r.kind == "Service" {
                self.allocate_service(&mut object).await?
            } else {
                Vec::new()
            };
            let key = self.key(
                &Target {
                    namespace: meta_str(&object, "namespace").map(String::from),
                    ..target.clone()
                },
                &name,
            );
            match self.store.create(&key, encode(&object)).await {
                Ok(kv) => return decode(&kv),
                Err(e) => {
                    self.release(&allocated).await;
                    match e {
                        StoreError::AlreadyExists(_) if explicit.is_none() && attempt < 7 => {
                            continue;
                        }
                        other => return Err(ApiError::from_store(other, r.group, r.plural, &name)),
                    }
                }
            }
        }
        Err(ApiError::internal("could not generate a unique name"))
    }

    fn check_type(&self, r: &Resource, object: &mut Value) -> Result<(), ApiError> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        if (!api_version.is_empty() && api_version != r.api_version())
            || (!kind.is_empty() && kind != r.kind)
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                r.api_version()
            )));
        }
        object["apiVersion"] = json!(r.api_version());
        object["kind"] = json!(r.kind);
        Ok(())
    }

    fn validate(&self, r: &Resource, name: &str, object: &Value) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        if let Some(why) = resources::check_name(name, r.name_rule) {
            causes.push(FieldCause::invalid(
                "metadata.name",
                format!("\"{name}\""),
                &why,
            ));
        }
        causes.extend(resources::validate(r, object));
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(r.kind, r.group, name, causes))
        }
    }

    async fn check_namespace_open(&self, ns: &str) -> Result<(), ApiError> {
        let kv = self
            .store
            .get(&format!("/registry/namespaces/{ns}"))
            .await
            .map_err(|e| ApiError::from_store(e, "", "namespaces", ns))?
            .ok_or_else(|| ApiError::not_found("", "namespaces", ns))?;
        let namespace = decode(&kv)?;
        if namespace
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    /// UPDATE (PUT) of an object, its status, or its scale.
    pub async fn update(&self, target: &Target, mut object: Value) -> Result<Value, ApiError> {
        let r = target.resource;
        let name = self.name(target)?.to_string();
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let (kv, existing) = self.read(target, &name).await?;
        if target.subresource.as_deref() == Some("scale") {
            let replicas = object
                .pointer("/spec/replicas")
                .cloned()
                .unwrap_or(json!(0));
            let expected = meta_str(&object, "resourceVersion")
                .map(parse_revision)
                .transpose()?;
            let mut next = existing.clone();
            next["spec"]["replicas"] = replicas;
            let stored = self
                .write(target, &name, &kv, &existing, next, expected)
                .await?;
            return Ok(scale_of(&stored));
        }
        self.check_type(r, &mut object)?;
        if meta_str(&object, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&object, "name").unwrap_or_default()
            )));
        }
        let expected = meta_str(&object, "resourceVersion")
            .filter(|v| !v.is_empty())
            .map(parse_revision)
            .transpose()?;
        self.write(target, &name, &kv, &existing, object, expected)
            .await
    }

    /// Writes `next` over `existing`, keeping what a client may not change, checking
    /// `expected` (or the revision read when the client sent none).
    async fn write(
        &self,
        target: &Target,
        name: &str,
        kv: &KeyValue,
        existing: &Value,
        mut next: Value,
        expected: Option<Revision>,
    ) -> Result<Value, ApiError> {
        let r = target.resource;
        if let Some(expected) = expected
            && expected != kv.mod_revision
        {
            return Err(ApiError::conflict(r.group, r.plural, name));
        }
        let subresource = target.subresource.as_deref();
        if subresource == Some("status") {
            // The status subresource changes status only.
            let status = next.get("status").cloned().unwrap_or(Value::Null);
            next = existing.clone();
            next["status"] = status;
        } else if subresource == Some("finalize") {
            // A namespace's finalize subresource changes spec.finalizers only.
            let finalizers = next
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            next = existing.clone();
            next["spec"]["finalizers"] = finalizers;
        } else {
            if r.has_subresource("status") && existing.get("status").is_some() {
                next["status"] = existing["status"].clone();
            }
            if !next.get("metadata").is_some_and(Value::is_object) {
                next["metadata"] = json!({});
            }
            // Immutable metadata comes from the stored object.
            for field in [
                "uid",
                "creationTimestamp",
                "namespace",
                "name",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generateName",
            ] {
                match existing["metadata"].get(field) {
                    Some(v) => next["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = next["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if r.kind == "Service" {
                for field in ["clusterIP", "clusterIPs"] {
                    let old = existing.pointer(&format!("/spec/{field}")).cloned();
                    let new = next.pointer(&format!("/spec/{field}")).cloned();
                    match (old, new) {
                        (Some(old), None) | (Some(old), Some(Value::Null)) => {
                            next["spec"][field] = old
                        }
                        (Some(old), Some(new)) if old != new && new != json!("") => {
                            return Err(ApiError::invalid(
                                r.kind,
                                r.group,
                                name,
                                vec![FieldCause::invalid(
                                    format!("spec.{field}"),
                                    new,
                                    "field is immutable",
                                )],
                            ));
                        }
                        (Some(old), Some(_)) => next["spec"][field] = old,
                        _ => {}
                    }
                }
                // Node ports keep their allocation when the client leaves them out.
                if let (Some(old_ports), Some(new_ports)) = (
                    existing
                        .pointer("/spec/ports")
                        .and_then(Value::as_array)
                        .cloned(),
                    next.pointer_mut("/spec/ports")
                        .and_then(Value::as_array_mut),
                ) {
                    for port in new_ports.iter_mut() {
                        if port.get("nodePort").is_none()
                            && let Some(old) =
                                old_ports.iter().find(|o| o.get("port") == port.get("port"))
                            && let Some(np) = old.get("nodePort")
                        {
                            port["nodePort"] = np.clone();
                        }
                    }
                }
                // A Service turned into a NodePort (or LoadBalancer) gets its node ports now, as
                // kube-apiserver allocates them on update too.
                let node_ports_wanted = matches!(
                    next.pointer("/spec/type").and_then(Value::as_str),
                    Some("NodePort" | "LoadBalancer")
                );
                if node_ports_wanted {
                    let owner = format!(
                        "{}/{name}",
                        meta_str(&next, "namespace").unwrap_or_default()
                    );
                    // Ports that already have one keep it; the others get a free one.
                    self.allocate_node_ports(&mut next, &owner, name, true)
                        .await?;
                }
            }
            resources::apply_defaults(r, &mut next);
            if r.has_spec {
                let generation = existing
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let changed = existing.get("spec") != next.get("spec");
                next["metadata"]["generation"] =
                    json!(if changed { generation + 1 } else { generation });
            }
        }
        self.validate(r, name, &next)?;
        // An object being deleted whose last finalizer is removed goes away now.
        let deleting = existing
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null());
        // Namespaces also wait for spec.finalizers (the namespace controller's "kubernetes").
        let finalizers_left = ["/metadata/finalizers", "/spec/finalizers"]
            .iter()
            .filter(|p| *p == &"/metadata/finalizers" || r.kind == "Namespace")
            .any(|p| {
                next.pointer(p)
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty())
            });
        if deleting && !finalizers_left && r.kind != "Pod" {
            let deleted = self
                .store
                .delete(&kv.key, Some(kv.mod_revision))
                .await
                .map_err(self.store_error(target, name))?;
            if r.kind == "Service" {
                self.release(&service_allocations(existing)).await;
            }
            let mut gone = next;
            gone["metadata"]["resourceVersion"] = json!(deleted.revision.to_string());
            return Ok(gone);
        }
        let stored = self
            .store
            .update(&kv.key, encode(&next), kv.mod_revision)
            .await
            .map_err(self.store_error(target, name))?;
        decode(&stored)
    }

    /// PATCH of an object, its status or its scale. Without a resourceVersion in the patch, a
    /// conflicting concurrent write is retried on the new state, as kube-apiserver does.
    pub async fn patch(
        &self,
        target: &Target,
        content_type: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let kind = PatchKind::from_content_type(content_type)?;
        let name = self.name(target)?.to_string();
        for _ in 0..5 {
            let (kv, existing) = self.read(target, &name).await?;
            let (mut patched, expected) = if target.subresource.as_deref() == Some("scale") {
                let mut scale = scale_of(&existing);
                patch::apply(kind, &mut scale, body)?;
                let mut next = existing.clone();
                next["spec"]["replicas"] =
                    scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
                (next, None)
            } else {
                let mut next = existing.clone();
                patch::apply(kind, &mut next, body)?;
                let expected = meta_str(&next, "resourceVersion")
                    .filter(|v| *v != kv.mod_revision.to_string().as_str())
                    .map(parse_revision)
                    .transpose()?;
                (next, expected)
            };
            if let Some(m) = patched.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            match self
                .write(
                    target,
                    &name,
                    &kv,
                    &existing,
                    patched,
                    expected.or(Some(kv.mod_revision)),
                )
                .await
            {
                Err(e) if e.reason == "Conflict" && expected.is_none() => continue,
                Ok(stored) if target.subresource.as_deref() == Some("scale") => {
                    return Ok(scale_of(&stored));
                }
                other => return other,
            }
        }
        let r = target.resource;
        Err(ApiError::conflict(r.group, r.plural, &name))
    }

    /// DELETE of one object, honouring grace periods for pods, finalizers and
    /// `propagationPolicy` (whose garbage collection the controllers carry out).
    pub async fn delete(
        &self,
        target: &Target,
        query: &Query,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let r = target.resource;
        let name = self.name(target)?.to_string();
        let options: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        let grace = query
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| options.get("gracePeriodSeconds").and_then(Value::as_i64));
        let propagation = query
            .get("propagationPolicy")
            .cloned()
            .or_else(|| {
                options
                    .get("propagationPolicy")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .or_else(
                || match options.get("orphanDependents").and_then(Value::as_bool) {
                    Some(true) => Some("Orphan".into()),
                    _ => None,
                },
            );
        for _ in 0..5 {
            let (kv, existing) = self.read(target, &name).await?;
            if let Some(uid) = options
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                && Some(uid) != meta_str(&existing, "uid")
            {
                return Err(
                    ApiError::conflict(r.group, r.plural, &name).with_message(format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&existing, "uid").unwrap_or_default()
                    )),
                );
            }
            if let Some(rv) = options
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                && parse_revision(rv)? != kv.mod_revision
            {
                return Err(ApiError::conflict(r.group, r.plural, &name));
            }
            let mut next = existing.clone();
            let mut finalizers: Vec<Value> = existing
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match propagation.as_deref() {
                Some("Foreground") => push_unique(&mut finalizers, "foregroundDeletion"),
                Some("Orphan") => push_unique(&mut finalizers, "orphan"),
                Some("Background") | None => {}
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported propagationPolicy {other:?}"
                    )));
                }
            }
            if r.kind == "Namespace" {
                let phase_terminating = json!("Terminating");
                if next.pointer("/metadata/deletionTimestamp").is_none() {
                    next["metadata"]["deletionTimestamp"] = json!(now());
                    next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                next["status"]["phase"] = phase_terminating;
                if !finalizers.is_empty() {
                    next["metadata"]["finalizers"] = json!(finalizers);
                }
                let spec_finalizers = next
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if spec_finalizers || !finalizers.is_empty() {
                    // A concurrent write (a status update, say) is retried on the new state.
                    match self.store_update(target, &name, &kv, &next).await {
                        Err(e) if e.reason == "Conflict" => continue,
                        other => return other,
                    }
                }
            } else {
                // Pods bound to a node are deleted gracefully: the kubelet stops them and then
                // confirms with a zero grace period.
                let bound = r.kind == "Pod"
                    && existing
                        .pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .is_some_and(|n| !n.is_empty());
                let pod_grace = existing
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30);
                let grace = if bound {
                    grace.unwrap_or(pod_grace).max(0)
                } else {
                    0
                };
                let already = existing
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|v| !v.is_null());
                if grace > 0 || !finalizers.is_empty() {
                    if !already || grace > 0 {
                        let when = jiff::Timestamp::now()
                            .checked_add(jiff::SignedDuration::from_secs(grace))
                            .unwrap_or(jiff::Timestamp::now());
                        let current_grace = existing
                            .pointer("/metadata/deletionGracePeriodSeconds")
                            .and_then(Value::as_i64);
                        // A grace period can only be shortened once deletion has started.
                        if !already || current_grace.is_none_or(|g| grace < g) {
                            next["metadata"]["deletionTimestamp"] =
                                json!(when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                            next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                        }
                    }
                    if !finalizers.is_empty() {
                        next["metadata"]["finalizers"] = json!(finalizers);
                    }
                    if grace > 0 || !finalizers.is_empty() {
                        if next == existing {
                            return Ok(existing);
                        }
                        // A concurrent write (a status update, say) is retried on the new state.
                        match self.store_update(target, &name, &kv, &next).await {
                            Err(e) if e.reason == "Conflict" => continue,
                            other => return other,
                        }
                    }
                }
            }
            match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(deleted) => {
                    if r.kind == "Service" {
                        self.release(&service_allocations(&existing)).await;
                    }
                    let mut gone = existing;
                    gone["metadata"]["resourceVersion"] = json!(deleted.revision.to_string());
                    return Ok(gone);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, r.group, r.plural, &name)),
            }
        }
        Err(ApiError::conflict(r.group, r.plural, &name))
    }

    /// DELETECOLLECTION: deletes every object the selectors pick, each as a single DELETE
    /// would (grace periods, finalizers); answers with the list of what was deleted.
    pub async fn delete_collection(
        &self,
        target: &Target,
        query: &Query,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let mut names = Vec::new();
        let list_query: Query = query
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "labelSelector" | "fieldSelector"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let meta = self
            .list_each(target, &list_query, &mut |object| {
                let ns = meta_str(&object, "namespace").map(String::from);
                names.push((
                    ns,
                    meta_str(&object, "name").unwrap_or_default().to_string(),
                ));
                Ok(())
            })
            .await?;
        let mut deleted = Vec::with_capacity(names.len());
        for (namespace, name) in names {
            let one = Target {
                namespace: namespace.or_else(|| target.namespace.clone()),
                name: Some(name),
                ..target.clone()
            };
            match self.delete(&one, query, body).await {
                Ok(object) => deleted.push(object),
                // Deleted by someone else meanwhile: nothing left to do.
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let r = target.resource;
        Ok(json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": { "resourceVersion": meta.revision.to_string() },
            "items": deleted,
        }))
    }

    async fn store_update(
        &self,
        target: &Target,
        name: &str,
        kv: &KeyValue,
        next: &Value,
    ) -> Result<Value, ApiError> {
        let stored = self
            .store
            .update(&kv.key, encode(next), kv.mod_revision)
            .await
            .map_err(self.store_error(target, name))?;
        decode(&stored)
    }

    /// `pods/<name>/binding`: sets `spec.nodeName` once.
    async fn bind(&self, target: &Target, binding: Value) -> Result<Value, ApiError> {
        let name = self.name(target)?.to_string();
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "Binding",
                    "",
                    &name,
                    vec![FieldCause::required("target.name")],
                )
            })?
            .to_string();
        let pod_target = Target {
            subresource: None,
            ..target.clone()
        };
        let (kv, pod) = self.read(&pod_target, &name).await?;
        if pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        {
            return Err(ApiError::conflict("", "pods", &name).with_message(format!(
                "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{}\"",
                pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default()
            )));
        }
        let mut next = pod.clone();
        next["spec"]["nodeName"] = json!(node);
        let conditions = next["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(json!({ "type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now() }));
        next["status"]["conditions"] = json!(conditions);
        self.store_update(&pod_target, &name, &kv, &next).await?;
        Ok(
            json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201 }),
        )
    }

    /// Allocates the ClusterIP (unless headless or ExternalName) and node ports of a new
    /// Service; returns the allocation keys so a failed create can release them.
    async fn allocate_service(&self, service: &mut Value) -> Result<Vec<String>, ApiError> {
        let mut taken = Vec::new();
        let name = meta_str(service, "name").unwrap_or_default().to_string();
        let owner = format!(
            "{}/{name}",
            meta_str(service, "namespace").unwrap_or_default()
        );
        let kind = service
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if kind != "ExternalName" {
            let requested = service
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if requested != "None" {
                match self.allocate_ip(&requested, &owner).await {
                    Ok((ip, key)) => {
                        taken.push(key);
                        service["spec"]["clusterIP"] = json!(ip.to_string());
                        service["spec"]["clusterIPs"] = json!([ip.to_string()]);
                    }
                    Err(e) => {
                        return Err(e.into_invalid("Service", &name, "spec.clusterIP", &requested));
                    }
                }
            } else {
                service["spec"]["clusterIPs"] = json!(["None"]);
            }
        }
        if kind == "NodePort" || kind == "LoadBalancer" {
            match self
                .allocate_node_ports(service, &owner, &name, false)
                .await
            {
                Ok(keys) => taken.extend(keys),
                Err(e) => {
                    self.release(&taken).await;
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }

    /// Allocates the node ports of `service`'s ports (requested ones are claimed, missing ones
    /// picked; with `only_missing`, ports that have one are left alone). Returns the allocation
    /// keys; on an error, what it took is released.
    async fn allocate_node_ports(
        &self,
        service: &mut Value,
        owner: &str,
        name: &str,
        only_missing: bool,
    ) -> Result<Vec<String>, ApiError> {
        let mut taken = Vec::new();
        let count = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(Vec::len)
            .unwrap_or(0);
        for i in 0..count {
            let requested = service["spec"]["ports"][i]
                .get("nodePort")
                .and_then(Value::as_u64);
            if only_missing && requested.is_some() {
                continue;
            }
            match self.allocate_node_port(requested, owner).await {
                Ok((port, key)) => {
                    taken.push(key);
                    service["spec"]["ports"][i]["nodePort"] = json!(port);
                }
                Err(e) => {
                    self.release(&taken).await;
                    return Err(e.into_invalid(
                        "Service",
                        name,
                        &format!("spec.ports[{i}].nodePort"),
                        &requested.map(|p| p.to_string()).unwrap_or_default(),
                    ));
                }
            }
        }
        Ok(taken)
    }

    /// Claims one allocation key for `owner`: `true` when it was free.
    async fn claim(&self, key: &str, owner: &str) -> Result<bool, Allocation> {
        match self.store.create(key, owner.as_bytes().to_vec()).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists(_)) => Ok(false),
            Err(e) => Err(Allocation::Store(e)),
        }
    }

    /// Claims the first free of `span` candidates, probing upwards from a random one; `nth(i)`
    /// is candidate `i` and its allocation key.
    async fn claim_any<T>(
        &self,
        span: u32,
        owner: &str,
        nth: impl Fn(u32) -> (T, String),
    ) -> Result<(T, String), Allocation> {
        let random = u32::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..4]
                .try_into()
                .unwrap_or([0; 4]),
        );
        let start = random % span.max(1);
        for step in 0..span {
            let (value, key) = nth((start + step) % span);
            if self.claim(&key, owner).await? {
                return Ok((value, key));
            }
        }
        Err(Allocation::Full("range is full".into()))
    }

    async fn allocate_ip(
        &self,
        requested: &str,
        owner: &str,
    ) -> Result<(Ipv4Addr, String), Allocation> {
        let (base, bits) = self.ranges.cidr;
        let size = 1u32 << (32 - u32::from(bits));
        let base = u32::from(base);
        let key = |ip: Ipv4Addr| format!("/registry/ranges/serviceips/{ip}");
        if !requested.is_empty() {
            let ip: Ipv4Addr = requested
                .parse()
                .map_err(|_| Allocation::Invalid("must be a valid IP address".into()))?;
            let offset = u32::from(ip).wrapping_sub(base);
            if offset == 0 || offset >= size - 1 {
                return Err(Allocation::Invalid(format!(
                    "provided IP is not in the valid range. The range of valid IPs is {}/{bits}",
                    Ipv4Addr::from(base)
                )));
            }
            return if self.claim(&key(ip), owner).await? {
                Ok((ip, key(ip)))
            } else {
                Err(Allocation::Invalid(
                    "provided IP is already allocated".into(),
                ))
            };
        }
        // .1 is the kubernetes Service's: candidates start at .2.
        let usable = size.saturating_sub(3).max(1);
        self.claim_any(usable, owner, |i| {
            let ip = Ipv4Addr::from(base + 2 + i);
            (ip, key(ip))
        })
        .await
    }

    async fn allocate_node_port(
        &self,
        requested: Option<u64>,
        owner: &str,
    ) -> Result<(u16, String), Allocation> {
        let (low, high) = self.ranges.node_ports;
        let key = |p: u16| format!("/registry/ranges/servicenodeports/{p}");
        if let Some(port) = requested {
            let port = u16::try_from(port).ok().filter(|p| (low..=high).contains(p))
                .ok_or_else(|| Allocation::Invalid(format!("provided port is not in the valid range. The range of valid ports is {low}-{high}")))?;
            return if self.claim(&key(port), owner).await? {
                Ok((port, key(port)))
            } else {
                Err(Allocation::Invalid(
                    "provided port is already allocated".into(),
                ))
            };
        }
        let span = u32::from(high - low) + 1;
        self.claim_any(span, owner, |i| {
            let port = low + i as u16;
            (port, key(port))
        })
        .await
    }

    async fn release(&self, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.store.delete(key, None).await
                && !matches!(e, StoreError::NotFound(_))
            {
                tracing::warn!(key, error = %e, "failed to release a service allocation");
            }
        }
    }
}

/// Why an allocation failed.
#[derive(Debug)]
enum Allocation {
    Invalid(String),
    Full(String),
    Store(StoreError),
}

impl Allocation {
    fn into_invalid(self, kind: &str, name: &str, field: &str, value: &str) -> ApiError {
        match self {
            Allocation::Invalid(why) | Allocation::Full(why) => ApiError::invalid(
                kind,
                "",
                name,
                vec![FieldCause::invalid(field, format!("\"{value}\""), &why)],
            ),
            Allocation::Store(e) => ApiError::from_store(e, "", "services", name),
        }
    }
}

/// The allocation keys a stored Service holds.
fn service_allocations(service: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = service.pointer("/spec/clusterIP").and_then(Value::as_str)
        && ip.parse::<Ipv4Addr>().is_ok()
    {
        keys.push(format!("/registry/ranges/serviceips/{ip}"));
    }
    for port in service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(np) = port.get("nodePort").and_then(Value::as_u64) {
            keys.push(format!("/registry/ranges/servicenodeports/{np}"));
        }
    }
    keys
}

fn push_unique(list: &mut Vec<Value>, item: &str) {
    if !list.iter().any(|f| f == item) {
        list.push(json!(item));
    }
}

/// The `autoscaling/v1` Scale of a Deployment or ReplicaSet.
fn scale_of(object: &Value) -> Value {
    let selector = match_labels_string(object.pointer("/spec/selector/matchLabels"));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object.pointer("/metadata/name"),
            "namespace": object.pointer("/metadata/namespace"),
            "uid": object.pointer("/metadata/uid"),
            "resourceVersion": object.pointer("/metadata/resourceVersion"),
            "creationTimestamp": object.pointer("/metadata/creationTimestamp"),
        },
        "spec": { "replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(0)) },
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

impl ApiError {
    /// The same error with another message.
    pub fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = encode_continue(42, "/registry/pods/ns/web-3");
        assert_eq!(
            decode_continue(&token).expect("decode"),
            (42, "/registry/pods/ns/web-3".to_string())
        );
        assert_eq!(
            decode_continue("not-a-token").expect_err("garbage").code,
            400
        );
    }

    #[test]
    fn generated_suffixes_use_kube_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(
            s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{s}"
        );
    }
}
