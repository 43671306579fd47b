//! Environment variables for a container: env (value, fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef) and envFrom.
//!
//! [`container_env`] follows kubelet's `makeEnvironmentVariables`: `envFrom` sources first, in
//! order, then `env` entries in order; a later entry with the same name replaces the value of an
//! earlier one. A literal `value` has its `$(VAR)` references expanded against the variables
//! defined before it (`$$` escapes a `$`, an unresolvable reference is left as written); values
//! that come from a `valueFrom` source are never expanded.
//!
//! Service-link variables (`<SVC>_SERVICE_HOST`, `<SVC>_PORT`, ... controlled by
//! `enableServiceLinks`) are deliberately not produced: cluster DNS serves the same purpose, and
//! producing them would need a Service informer in every pod worker.
//!
//! The [`ObjectSource`] seam (ConfigMaps and Secrets by namespace and name) is shared with the
//! [`super::volumes`] module; [`ApiSource`] implements it over the Kubernetes API.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

pub use super::quantity::{Quantity, QuantityError};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret,
};

/// Where the kubelet reads ConfigMaps and Secrets from.
#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// The ConfigMap `namespace/name`, or `None` when it does not exist.
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, SourceError>;
    /// The Secret `namespace/name`, or `None` when it does not exist.
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError>;
}

/// A failure to read an object from an [`ObjectSource`] (other than the object not existing).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The API server answered with an error or could not be reached.
    #[error("failed to get {kind} {namespace}/{name}")]
    Api {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
        /// The client error (boxed: `kube::Error` is large).
        #[source]
        source: Box<kube::Error>,
    },
    /// Any other source failure (used by caches and test doubles).
    #[error("failed to get {kind} {namespace}/{name}: {message}")]
    Unavailable {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
        /// What went wrong.
        message: String,
    },
}

/// [`ObjectSource`] that reads straight from the API server with a `get` per call.
#[derive(Clone)]
pub struct ApiSource {
    client: kube::Client,
}

impl std::fmt::Debug for ApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSource").finish_non_exhaustive()
    }
}

impl ApiSource {
    /// A source reading through `client` (the node's credentials).
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl ObjectSource for ApiSource {
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, SourceError> {
        kube::Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|source| SourceError::Api {
                kind: "configmap",
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: Box::new(source),
            })
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError> {
        kube::Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|source| SourceError::Api {
                kind: "secret",
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: Box::new(source),
            })
    }
}

/// The node's allocatable resources: what a missing container limit resolves to in
/// `resourceFieldRef`, as kubelet does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeResources {
    /// Allocatable CPU in millicores.
    pub cpu_millis: u64,
    /// Allocatable memory in bytes.
    pub memory_bytes: u64,
    /// Allocatable ephemeral storage in bytes.
    pub ephemeral_bytes: u64,
}

/// Why a container's environment could not be built. The messages of the missing-object
/// variants are the ones kubelet puts in the `CreateContainerConfigError` waiting message.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A referenced ConfigMap does not exist and the reference is not optional.
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound {
        /// Namespace of the pod.
        namespace: String,
        /// Name of the ConfigMap.
        name: String,
    },
    /// A referenced Secret does not exist and the reference is not optional.
    #[error("secret \"{name}\" not found")]
    SecretNotFound {
        /// Namespace of the pod.
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
    /// A `configMapKeyRef` names a key the ConfigMap does not have.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        /// Namespace of the pod.
        namespace: String,
        /// Name of the ConfigMap.
        name: String,
        /// The missing key.
        key: String,
    },
    /// A `secretKeyRef` names a key the Secret does not have.
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        /// Namespace of the pod.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The missing key.
        key: String,
    },
    /// A `fieldRef` names a field the kubelet cannot provide.
    #[error("unsupported fieldPath: {0}")]
    UnsupportedFieldPath(String),
    /// A `resourceFieldRef` names a resource the kubelet cannot provide.
    #[error("unsupported container resource: {0}")]
    UnsupportedResource(String),
    /// A `resourceFieldRef` names a container the pod does not have.
    #[error("container {0} not found")]
    ContainerNotFound(String),
    /// A quantity (limit, request, divisor) could not be parsed.
    #[error(transparent)]
    Quantity(#[from] QuantityError),
    /// A `resourceFieldRef` divisor is zero.
    #[error("divisor {0} of resource {1} must be positive")]
    ZeroDivisor(String, String),
    /// An env source this kubelet does not implement (for example `fileKeyRef`).
    #[error("env var {name}: {what} is not supported")]
    Unsupported {
        /// The variable.
        name: String,
        /// The unsupported source.
        what: &'static str,
    },
    /// Reading a ConfigMap or Secret failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// Expands `$(VAR)` references in `input` the way kubelet does (its fork of Go's `os.Expand`):
/// `$(NAME)` becomes `lookup(NAME)` when that is `Some`, and stays `$(NAME)` otherwise; `$$`
/// becomes `$`; a `$` followed by anything else, or an unterminated `$(`, is kept as written.
/// The same rules apply to a container's `command` and `args`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let Some(next) = after.chars().next() else {
            // A trailing `$` is kept.
            out.push('$');
            rest = after;
            break;
        };
        match next {
            '$' => {
                out.push('$');
                rest = &after[1..];
            }
            '(' => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            other => {
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `name` may be an environment variable name, by Kubernetes' relaxed rule (the
/// `RelaxedEnvironmentVariableValidation` gate, GA since 1.34): printable ASCII other than
/// `=`, not empty, not starting with `..`. `envFrom` keys failing it are skipped, as kubelet does.
pub fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with("..")
        && name
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'=')
}

/// Environment under construction: insertion order, later writes replace the value in place.
#[derive(Default)]
struct EnvList {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl EnvList {
    fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&i) => self.vars[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.vars.len());
                self.vars.push((name, value));
            }
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        self.index.get(name).map(|&i| self.vars[i].1.clone())
    }
}

/// The IP addresses the kubelet reports for a pod or its host: `primary` first (when given),
/// then the addresses in the pod's status.
fn ip_list(primary: Option<&str>, single: Option<&String>, list: &[String]) -> Vec<String> {
    let mut ips: Vec<String> = Vec::new();
    let candidates = primary
        .map(str::to_owned)
        .into_iter()
        .chain(single.cloned())
        .chain(list.iter().cloned());
    for ip in candidates {
        if !ip.is_empty() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// Formats labels or annotations as kubelet's `fieldpath.FormatMap`: `key="value"` lines, sorted.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// Splits `metadata.labels['key']` into (`metadata.labels`, `key`).
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let (base, rest) = path.split_once("['")?;
    let key = rest.strip_suffix("']")?;
    Some((base, key))
}

/// The value of a downward-API `metadata.*` field path (kubelet's
/// `fieldpath.ExtractFieldPathAsString`), shared with downward-API volumes.
pub(crate) fn pod_metadata_field(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    if let Some((base, key)) = split_subscript(path) {
        let map = match base {
            "metadata.annotations" => meta.annotations.as_ref(),
            "metadata.labels" => meta.labels.as_ref(),
            _ => return Err(EnvError::UnsupportedFieldPath(path.to_owned())),
        };
        return Ok(map.and_then(|m| m.get(key)).cloned().unwrap_or_default());
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    match path {
        "metadata.annotations" => Ok(format_map(meta.annotations.as_ref())),
        "metadata.labels" => Ok(format_map(meta.labels.as_ref())),
        "metadata.name" => Ok(opt(&meta.name)),
        "metadata.namespace" => Ok(opt(&meta.namespace)),
        "metadata.uid" => Ok(opt(&meta.uid)),
        _ => Err(EnvError::UnsupportedFieldPath(path.to_owned())),
    }
}

/// The value of an env `fieldRef` (kubelet's `podFieldSelectorRuntimeValue`). A missing host
/// or pod IP resolves to the empty string.
fn pod_field(
    pod: &Pod,
    selector: &ObjectFieldSelector,
    pod_ip: Option<&str>,
    host_ip: Option<&str>,
) -> Result<String, EnvError> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let pod_ips = || {
        let list: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().map(|ip| ip.ip.clone()).collect())
            .unwrap_or_default();
        ip_list(pod_ip, status.and_then(|s| s.pod_ip.as_ref()), &list)
    };
    let host_ips = || {
        let list: Vec<String> = status
            .and_then(|s| s.host_ips.as_ref())
            .map(|v| v.iter().map(|ip| ip.ip.clone()).collect())
            .unwrap_or_default();
        ip_list(host_ip, status.and_then(|s| s.host_ip.as_ref()), &list)
    };
    let first = |ips: Vec<String>| ips.into_iter().next().unwrap_or_default();
    match selector.field_path.as_str() {
        "spec.nodeName" => Ok(spec.and_then(|s| s.node_name.clone()).unwrap_or_default()),
        "spec.serviceAccountName" => Ok(spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default()),
        "status.hostIP" => Ok(first(host_ips())),
        "status.hostIPs" => Ok(host_ips().join(",")),
        "status.podIP" => Ok(first(pod_ips())),
        "status.podIPs" => Ok(pod_ips().join(",")),
        path => pod_metadata_field(pod, path),
    }
}

/// The value of a `resourceFieldRef` for `container` (kubelet's `ExtractContainerResourceValue`
/// after `defaultPodLimitsForDownwardAPI`): a missing or zero limit resolves to the node's
/// allocatable; a missing request resolves to the explicit limit (API defaulting), else 0. CPU
/// is rounded up to whole units of the divisor, as are memory and ephemeral storage.
pub(crate) fn container_resource(
    selector: &ResourceFieldSelector,
    container: &Container,
    allocatable: &NodeResources,
) -> Result<String, EnvError> {
    let divisor = match &selector.divisor {
        Some(d) => Some(Quantity::parse(&d.0)?).filter(|q| !q.is_zero()),
        None => None,
    };
    let divisor = match divisor {
        Some(d) => d,
        None => Quantity::parse("1")?,
    };
    let resources = container.resources.as_ref();
    let get = |map: Option<&ResourceList>, name: &str| -> Result<Option<Quantity>, EnvError> {
        map.and_then(|m| m.get(name))
            .map(|q| Quantity::parse(&q.0))
            .transpose()
            .map_err(EnvError::from)
    };
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let (kind, which) = match selector.resource.split_once('.') {
        Some((which @ ("limits" | "requests"), kind)) => (kind, which),
        _ => return Err(EnvError::UnsupportedResource(selector.resource.clone())),
    };
    let (allocatable_value, is_cpu) = match kind {
        "cpu" => (allocatable.cpu_millis, true),
        "memory" => (allocatable.memory_bytes, false),
        "ephemeral-storage" => (allocatable.ephemeral_bytes, false),
        _ => return Err(EnvError::UnsupportedResource(selector.resource.clone())),
    };
    let unit = |q: &Quantity| if is_cpu { q.milli_value() } else { q.value() };
    let limit = get(limits, kind)?.filter(|q| !q.is_zero());
    let amount = if which == "limits" {
        limit.as_ref().map(unit).unwrap_or(allocatable_value)
    } else {
        match get(requests, kind)? {
            Some(q) => unit(&q),
            None => limit.as_ref().map(unit).unwrap_or(0),
        }
    };
    let div = unit(&divisor);
    if div == 0 {
        let text = selector
            .divisor
            .as_ref()
            .map(|d| d.0.clone())
            .unwrap_or_default();
        return Err(EnvError::ZeroDivisor(text, selector.resource.clone()));
    }
    Ok(amount.div_ceil(div).to_string())
}

/// A container's `limits` or `requests`.
type ResourceList = BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;

/// Finds container `name` among the pod's containers, then its init containers.
pub(crate) fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// Fetches and memoises ConfigMaps and Secrets for one environment build, like kubelet's
/// per-call maps.
struct Fetched<'a> {
    source: &'a dyn ObjectSource,
    namespace: &'a str,
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl Fetched<'_> {
    async fn config_map(&mut self, name: &str) -> Result<Option<&ConfigMap>, EnvError> {
        if !self.config_maps.contains_key(name) {
            let cm = self.source.config_map(self.namespace, name).await?;
            self.config_maps.insert(name.to_owned(), cm);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, EnvError> {
        if !self.secrets.contains_key(name) {
            let s = self.source.secret(self.namespace, name).await?;
            self.secrets.insert(name.to_owned(), s);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }
}

/// A Secret's data as text. `stringData` is merged over `data` in case the API server handed it
/// back unconverted; bytes that are not UTF-8 are replaced, as Go's string conversion would
/// pass them through (an env var cannot carry them faithfully either way).
fn secret_entries(secret: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Builds the environment of `container` in `pod`, in kubelet's order and with its error
/// messages. `pod_ip`/`host_ip` are the sandbox's and node's primary addresses (falling back to
/// the pod status); `node_allocatable` is what missing limits resolve to. The result lists each
/// name once, in the order it was first defined, carrying its last value.
pub async fn container_env(
    pod: &Pod,
    container: &Container,
    source: &dyn ObjectSource,
    pod_ip: Option<&str>,
    host_ip: Option<&str>,
    node_allocatable: &NodeResources,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut fetched = Fetched {
        source,
        namespace,
        config_maps: HashMap::new(),
        secrets: HashMap::new(),
    };
    let mut env = EnvList::default();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        if let Some(cm_ref) = &from.config_map_ref {
            match fetched.config_map(&cm_ref.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        let name = format!("{prefix}{k}");
                        if is_env_var_name(&name) {
                            env.set(name, v.clone());
                        } else {
                            tracing::warn!(
                                configmap = %cm_ref.name, key = %name,
                                "skipping invalid environment variable name from envFrom"
                            );
                        }
                    }
                }
                None if cm_ref.optional == Some(true) => {}
                None => {
                    return Err(EnvError::ConfigMapNotFound {
                        namespace: namespace.to_owned(),
                        name: cm_ref.name.clone(),
                    });
                }
            }
        }
        if let Some(s_ref) = &from.secret_ref {
            match fetched.secret(&s_ref.name).await? {
                Some(secret) => {
                    for (k, v) in secret_entries(secret) {
                        let name = format!("{prefix}{k}");
                        if is_env_var_name(&name) {
                            env.set(name, v);
                        } else {
                            tracing::warn!(
                                secret = %s_ref.name, key = %name,
                                "skipping invalid environment variable name from envFrom"
                            );
                        }
                    }
                }
                None if s_ref.optional == Some(true) => {}
                None => {
                    return Err(EnvError::SecretNotFound {
                        namespace: namespace.to_owned(),
                        name: s_ref.name.clone(),
                    });
                }
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => expand(v, &|name| env.get(name)),
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    pod_field(pod, field, pod_ip, host_ip)?
                } else if let Some(res) = &from.resource_field_ref {
                    let target = match res.container_name.as_deref() {
                        None | Some("") => container,
                        Some(name) if name == container.name => container,
                        Some(name) => find_container(pod, name)
                            .ok_or_else(|| EnvError::ContainerNotFound(name.to_owned()))?,
                    };
                    container_resource(res, target, node_allocatable)?
                } else if let Some(key_ref) = &from.config_map_key_ref {
                    let optional = key_ref.optional == Some(true);
                    match fetched.config_map(&key_ref.name).await? {
                        None if optional => continue,
                        None => {
                            return Err(EnvError::ConfigMapNotFound {
                                namespace: namespace.to_owned(),
                                name: key_ref.name.clone(),
                            });
                        }
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(EnvError::ConfigMapKeyNotFound {
                                    namespace: namespace.to_owned(),
                                    name: key_ref.name.clone(),
                                    key: key_ref.key.clone(),
                                });
                            }
                        },
                    }
                } else if let Some(key_ref) = &from.secret_key_ref {
                    let optional = key_ref.optional == Some(true);
                    match fetched.secret(&key_ref.name).await? {
                        None if optional => continue,
                        None => {
                            return Err(EnvError::SecretNotFound {
                                namespace: namespace.to_owned(),
                                name: key_ref.name.clone(),
                            });
                        }
                        Some(secret) => match secret_entries(secret).remove(&key_ref.key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                return Err(EnvError::SecretKeyNotFound {
                                    namespace: namespace.to_owned(),
                                    name: key_ref.name.clone(),
                                    key: key_ref.key.clone(),
                                });
                            }
                        },
                    }
                } else if from.file_key_ref.is_some() {
                    return Err(EnvError::Unsupported {
                        name: var.name.clone(),
                        what: "valueFrom.fileKeyRef",
                    });
                } else {
                    String::new()
                }
            }
            _ => String::new(),
        };
        env.set(var.name.clone(), value);
    }
    Ok(env.vars)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    /// ConfigMaps and Secrets held in maps keyed by (namespace, name); mutable for update tests.
    #[derive(Debug, Default)]
    pub(crate) struct FakeSource {
        pub(crate) config_maps: Mutex<HashMap<(String, String), ConfigMap>>,
        pub(crate) secrets: Mutex<HashMap<(String, String), Secret>>,
    }

    impl FakeSource {
        pub(crate) fn add_config_map(&self, namespace: &str, value: serde_json::Value) {
            let cm: ConfigMap = serde_json::from_value(value).unwrap();
            let name = cm.metadata.name.clone().unwrap();
            self.config_maps
                .lock()
                .unwrap()
                .insert((namespace.to_owned(), name), cm);
        }

        pub(crate) fn add_secret(&self, namespace: &str, value: serde_json::Value) {
            let s: Secret = serde_json::from_value(value).unwrap();
            let name = s.metadata.name.clone().unwrap();
            self.secrets
                .lock()
                .unwrap()
                .insert((namespace.to_owned(), name), s);
        }
    }

    #[async_trait]
    impl ObjectSource for FakeSource {
        async fn config_map(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<ConfigMap>, SourceError> {
            let key = (namespace.to_owned(), name.to_owned());
            Ok(self.config_maps.lock().unwrap().get(&key).cloned())
        }

        async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError> {
            let key = (namespace.to_owned(), name.to_owned());
            Ok(self.secrets.lock().unwrap().get(&key).cloned())
        }
    }

    fn source() -> FakeSource {
        let s = FakeSource::default();
        s.add_config_map(
            "ns",
            json!({"metadata": {"name": "cfg"}, "data": {"MODE": "fast", "LEVEL": "3", "bad=key": "x", "1ok": "y"}}),
        );
        s.add_config_map(
            "ns",
            json!({"metadata": {"name": "other"}, "data": {"MODE": "slow", "EXTRA": "e"}}),
        );
        // "c2VjcmV0" is base64 for "secret".
        s.add_secret(
            "ns",
            json!({"metadata": {"name": "sec"}, "data": {"PASSWORD": "c2VjcmV0"}}),
        );
        s
    }

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "web-1", "namespace": "ns", "uid": "uid-123",
                "labels": {"app": "web", "tier": "front"},
                "annotations": {"note": "hello \"world\""}
            },
            "spec": {"nodeName": "node-a", "serviceAccountName": "robot", "containers": containers},
            "status": {"podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00::5"}], "hostIP": "192.0.2.1",
                       "hostIPs": [{"ip": "192.0.2.1"}, {"ip": "2001:db8::1"}]}
        }))
        .unwrap()
    }

    const NODE: NodeResources = NodeResources {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        ephemeral_bytes: 100 << 30,
    };

    async fn env_of(p: &Pod, src: &FakeSource) -> Result<Vec<(String, String)>, EnvError> {
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        container_env(p, &c, src, None, None, &NODE).await
    }

    fn lookup(vars: &[(String, String)], name: &str) -> Option<String> {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn expand_follows_kubelet() {
        let vars: HashMap<&str, &str> = [("A", "x"), ("EMPTY", "")].into_iter().collect();
        let f = |n: &str| vars.get(n).map(|v| v.to_string());
        assert_eq!(expand("$(A)-y", &f), "x-y");
        assert_eq!(expand("$(A)$(A)", &f), "xx");
        assert_eq!(expand("$(NOPE)", &f), "$(NOPE)");
        assert_eq!(expand("$$(A)", &f), "$(A)");
        assert_eq!(expand("$$$(A)", &f), "$x");
        assert_eq!(expand("a$b", &f), "a$b");
        assert_eq!(expand("cost $", &f), "cost $");
        assert_eq!(expand("$(A", &f), "$(A");
        assert_eq!(expand("$(EMPTY)z", &f), "z");
        assert_eq!(expand("$é$(A)", &f), "$éx");
        assert_eq!(expand("", &f), "");
    }

    #[test]
    fn quantities_parse() {
        let q = |s| Quantity::parse(s).unwrap();
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("0.5").milli_value(), 500);
        assert_eq!(q("2").milli_value(), 2000);
        assert_eq!(q("1.5").value(), 2);
        assert_eq!(q("64Mi").value(), 64 << 20);
        assert_eq!(q("1G").value(), 1_000_000_000);
        assert_eq!(q("129e6").value(), 129_000_000);
        assert_eq!(q("1.5Gi").value(), 3 << 29);
        assert_eq!(q("12345").value(), 12345);
        assert_eq!(q("1k").value(), 1000);
        assert_eq!(q("1Ki").value(), 1024);
        assert_eq!(q("250u").milli_value(), 1);
        assert_eq!(q("0").value(), 0);
        assert_eq!(q("1E").value(), 1_000_000_000_000_000_000);
        assert_eq!(q("100Ei").value(), u64::MAX);
        for bad in ["", "m", "1.2.3", "5x", "-1", "1e", "abc", "1 Mi"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn env_var_names() {
        assert!(is_env_var_name("PATH"));
        assert!(is_env_var_name("1ok"));
        assert!(is_env_var_name("my.var-x"));
        assert!(!is_env_var_name("bad=key"));
        assert!(!is_env_var_name(""));
        assert!(!is_env_var_name("..dots"));
        assert!(!is_env_var_name("tab\there"));
        assert!(!is_env_var_name("é"));
    }

    #[tokio::test]
    async fn literal_values_expand_earlier_vars_only() {
        let p = pod(
            json!([{"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}}], "env": [
                {"name": "A", "value": "a"},
                {"name": "B", "value": "$(A)-$(MODE)-$(LATER)"},
                {"name": "LATER", "value": "l"},
                {"name": "ESC", "value": "$$(A)"},
                {"name": "FROM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NOEXP", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
                {"name": "EMPTY"}
            ]}]),
        );
        let env = env_of(&p, &source()).await.unwrap();
        assert_eq!(lookup(&env, "B").unwrap(), "a-fast-$(LATER)");
        assert_eq!(lookup(&env, "ESC").unwrap(), "$(A)");
        assert_eq!(lookup(&env, "FROM").unwrap(), "web-1");
        assert_eq!(lookup(&env, "EMPTY").unwrap(), "");
    }

    #[tokio::test]
    async fn env_from_then_env_later_wins() {
        let p = pod(json!([{"name": "c",
            "envFrom": [
                {"configMapRef": {"name": "cfg"}},
                {"configMapRef": {"name": "other"}},
                {"prefix": "S_", "secretRef": {"name": "sec"}},
                {"prefix": "P_", "configMapRef": {"name": "cfg"}}
            ],
            "env": [{"name": "LEVEL", "value": "9"}, {"name": "LEVEL", "value": "$(LEVEL)0"}]}]));
        let env = env_of(&p, &source()).await.unwrap();
        // Invalid names ("bad=key") are skipped; names are listed once, where first defined.
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "1ok",
                "LEVEL",
                "MODE",
                "EXTRA",
                "S_PASSWORD",
                "P_1ok",
                "P_LEVEL",
                "P_MODE"
            ]
        );
        assert_eq!(lookup(&env, "MODE").unwrap(), "slow");
        assert_eq!(lookup(&env, "S_PASSWORD").unwrap(), "secret");
        assert_eq!(lookup(&env, "LEVEL").unwrap(), "90");
    }

    #[tokio::test]
    async fn field_refs() {
        let fields = [
            ("metadata.name", "web-1"),
            ("metadata.namespace", "ns"),
            ("metadata.uid", "uid-123"),
            ("metadata.labels['app']", "web"),
            ("metadata.labels['missing']", ""),
            ("metadata.annotations['note']", "hello \"world\""),
            ("metadata.labels", "app=\"web\"\ntier=\"front\""),
            ("spec.nodeName", "node-a"),
            ("spec.serviceAccountName", "robot"),
            ("status.hostIP", "192.0.2.1"),
            ("status.hostIPs", "192.0.2.1,2001:db8::1"),
            ("status.podIP", "10.244.0.5"),
            ("status.podIPs", "10.244.0.5,fd00::5"),
        ];
        let env: Vec<_> = fields
            .iter()
            .enumerate()
            .map(|(i, (path, _))| json!({"name": format!("V{i}"), "valueFrom": {"fieldRef": {"fieldPath": path}}}))
            .collect();
        let p = pod(json!([{"name": "c", "env": env}]));
        let got = env_of(&p, &source()).await.unwrap();
        for (i, (path, want)) in fields.iter().enumerate() {
            assert_eq!(lookup(&got, &format!("V{i}")).unwrap(), *want, "{path}");
        }

        // The sandbox's IP comes first when given.
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let got = container_env(
            &p,
            &c,
            &source(),
            Some("10.244.0.9"),
            Some("192.0.2.7"),
            &NODE,
        )
        .await
        .unwrap();
        assert_eq!(lookup(&got, "V11").unwrap(), "10.244.0.9");
        assert_eq!(
            lookup(&got, "V12").unwrap(),
            "10.244.0.9,10.244.0.5,fd00::5"
        );
        assert_eq!(lookup(&got, "V9").unwrap(), "192.0.2.7");

        let p = pod(
            json!([{"name": "c", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}]}]),
        );
        let err = env_of(&p, &source()).await.unwrap_err();
        assert_eq!(err.to_string(), "unsupported fieldPath: spec.hostname");
    }

    #[tokio::test]
    async fn resource_field_refs() {
        let r = |name: &str, res: &str, divisor: Option<&str>| {
            let mut sel = json!({"resource": res});
            if let Some(d) = divisor {
                sel["divisor"] = json!(d);
            }
            json!({"name": name, "valueFrom": {"resourceFieldRef": sel}})
        };
        let p = pod(json!([{"name": "c",
        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"memory": "64Mi"}},
        "env": [
            r("CPU", "limits.cpu", None),
            r("CPU_M", "limits.cpu", Some("1m")),
            r("CPU_100M", "limits.cpu", Some("100m")),
            r("MEM", "limits.memory", None),
            r("MEM_MI", "limits.memory", Some("1Mi")),
            r("MEM_G", "limits.memory", Some("1G")),
            r("REQ_CPU", "requests.cpu", Some("1m")),
            r("REQ_MEM", "requests.memory", Some("1Mi")),
            r("EPH", "limits.ephemeral-storage", Some("1Gi")),
            r("REQ_EPH", "requests.ephemeral-storage", None),
        ]}]));
        let env = env_of(&p, &source()).await.unwrap();
        let want = [
            ("CPU", "1"),
            ("CPU_M", "500"),
            ("CPU_100M", "5"),
            ("MEM", "134217728"),
            ("MEM_MI", "128"),
            ("MEM_G", "1"),
            // No cpu request: defaulted from the limit.
            ("REQ_CPU", "500"),
            ("REQ_MEM", "64"),
            // No ephemeral limit: node allocatable.
            ("EPH", "100"),
            ("REQ_EPH", "0"),
        ];
        for (name, value) in want {
            assert_eq!(lookup(&env, name).unwrap(), value, "{name}");
        }

        // No limits at all: node allocatable.
        let p = pod(json!([{"name": "c", "env": [
            r("CPU", "limits.cpu", None), r("MEM", "limits.memory", Some("1Mi")),
            r("REQ", "requests.cpu", None)
        ]}]));
        let env = env_of(&p, &source()).await.unwrap();
        assert_eq!(lookup(&env, "CPU").unwrap(), "4");
        assert_eq!(lookup(&env, "MEM").unwrap(), "8192");
        assert_eq!(lookup(&env, "REQ").unwrap(), "0");

        // Another container by name.
        let p = pod(json!([
            {"name": "c", "env": [{"name": "X", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "limits.memory", "divisor": "1Mi"}}}]},
            {"name": "side", "resources": {"limits": {"memory": "32Mi"}}}
        ]));
        assert_eq!(
            lookup(&env_of(&p, &source()).await.unwrap(), "X").unwrap(),
            "32"
        );

        let p = pod(json!([{"name": "c", "env": [r("X", "limits.gpu", None)]}]));
        assert!(matches!(
            env_of(&p, &source()).await,
            Err(EnvError::UnsupportedResource(_))
        ));
    }

    #[tokio::test]
    async fn key_refs_and_missing_objects() {
        let key_ref = |kind: &str, name: &str, key: &str, optional: bool| {
            json!([{"name": "c", "env": [
                {"name": "V", "valueFrom": {kind: {"name": name, "key": key, "optional": optional}}}
            ]}])
        };
        let src = source();
        let ok = env_of(
            &pod(key_ref("configMapKeyRef", "cfg", "LEVEL", false)),
            &src,
        )
        .await
        .unwrap();
        assert_eq!(lookup(&ok, "V").unwrap(), "3");
        let ok = env_of(
            &pod(key_ref("secretKeyRef", "sec", "PASSWORD", false)),
            &src,
        )
        .await
        .unwrap();
        assert_eq!(lookup(&ok, "V").unwrap(), "secret");

        let cases = [
            (
                key_ref("configMapKeyRef", "x", "k", false),
                "configmap \"x\" not found",
            ),
            (
                key_ref("configMapKeyRef", "cfg", "k", false),
                "couldn't find key k in ConfigMap ns/cfg",
            ),
            (
                key_ref("secretKeyRef", "s", "k", false),
                "secret \"s\" not found",
            ),
            (
                key_ref("secretKeyRef", "sec", "k", false),
                "couldn't find key k in Secret ns/sec",
            ),
            (
                json!([{"name": "c", "envFrom": [{"configMapRef": {"name": "x"}}]}]),
                "configmap \"x\" not found",
            ),
            (
                json!([{"name": "c", "envFrom": [{"secretRef": {"name": "s"}}]}]),
                "secret \"s\" not found",
            ),
        ];
        for (containers, message) in cases {
            let err = env_of(&pod(containers), &src).await.unwrap_err();
            assert_eq!(err.to_string(), message);
        }

        // Optional references to missing objects or keys leave the variable out.
        for containers in [
            key_ref("configMapKeyRef", "x", "k", true),
            key_ref("configMapKeyRef", "cfg", "k", true),
            key_ref("secretKeyRef", "s", "k", true),
            key_ref("secretKeyRef", "sec", "k", true),
        ] {
            let env = env_of(&pod(containers), &src).await.unwrap();
            assert!(env.is_empty(), "{env:?}");
        }
        let env = env_of(
            &pod(json!([{"name": "c", "envFrom": [
                {"configMapRef": {"name": "x", "optional": true}},
                {"secretRef": {"name": "s", "optional": true}}
            ]}])),
            &src,
        )
        .await
        .unwrap();
        assert!(env.is_empty());
    }

    #[test]
    fn container_env_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let p = pod(json!([{"name": "c"}]));
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let src = source();
        let fut = container_env(&p, &c, &src, None, None, &NODE);
        assert_send(&fut);
    }
}
