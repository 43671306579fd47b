//! The kinds this API server serves: their names, scopes, subresources and field selectors, how
//! an object of each is validated (its k8s-openapi type, plus the rules kube-apiserver adds) and
//! defaulted the way kube-apiserver defaults it.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::status::FieldCause;

/// One served resource.
#[derive(Debug)]
pub struct Resource {
    /// API group ("" for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource name (the path segment).
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Subresources served (`status`, `scale`, `binding`).
    pub subresources: &'static [&'static str],
    /// Fields a field selector may use besides metadata.name / metadata.namespace.
    pub field_selectors: &'static [&'static str],
    /// Whether `metadata.generation` tracks spec changes.
    pub has_spec: bool,
    /// Checks the object against its typed schema; the first field that does not fit.
    pub typed: fn(&Value) -> Result<(), FieldCause>,
    /// Name rule for `metadata.name`.
    pub name_rule: NameRule,
}

/// Which DNS rule a kind's names follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: lowercase alphanumerics, '-' and '.', at most 253.
    Subdomain,
    /// RFC 1123 label: lowercase alphanumerics and '-', at most 63.
    Label,
    /// RFC 1035 label: a label that starts with a letter (Services).
    Label1035,
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key prefix of every object of this resource, with a trailing slash.
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/", self.plural),
            _ => format!("/registry/{}/", self.plural),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.key_prefix(namespace))
    }

    /// Whether a subresource is served.
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
}

/// Deserializes `object` as `T`, reporting the path of the first field that does not fit.
fn typed<T: DeserializeOwned>(object: &Value) -> Result<(), FieldCause> {
    let deserializer = object.clone();
    serde_path_to_error::deserialize::<_, T>(deserializer)
        .map(|_| ())
        .map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            FieldCause {
                reason: "FieldValueInvalid",
                field: if path == "." { String::new() } else { path },
                message: format!("Invalid value: {message}"),
            }
        })
}

macro_rules! resource {
    ($group:expr, $kind:ident: $ty:ty, $plural:expr, $singular:expr, namespaced = $ns:expr,
     short = [$($short:expr),*], categories = [$($cat:expr),*], sub = [$($sub:expr),*],
     fields = [$($field:expr),*], spec = $spec:expr, names = $rule:expr) => {
        Resource {
            group: $group,
            version: "v1",
            kind: stringify!($kind),
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            subresources: &[$($sub),*],
            field_selectors: &[$($field),*],
            has_spec: $spec,
            typed: typed::<$ty>,
            name_rule: $rule,
        }
    };
}

use k8s_openapi::api::{apps, coordination, core, discovery};

/// Every served resource.
pub static RESOURCES: &[Resource] = &[
    resource!("", Namespace: core::v1::Namespace, "namespaces", "namespace", namespaced = false,
        short = ["ns"], categories = [], sub = ["status", "finalize"], fields = ["status.phase"],
        spec = false, names = NameRule::Label),
    resource!("", Node: core::v1::Node, "nodes", "node", namespaced = false,
        short = ["no"], categories = [], sub = ["status"], fields = ["spec.unschedulable"],
        spec = false, names = NameRule::Subdomain),
    resource!("", Pod: core::v1::Pod, "pods", "pod", namespaced = true,
        short = ["po"], categories = ["all"], sub = ["status", "binding"],
        fields = ["spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                  "spec.serviceAccountName", "status.phase", "status.podIP", "status.nominatedNodeName"],
        spec = false, names = NameRule::Subdomain),
    resource!("", Service: core::v1::Service, "services", "service", namespaced = true,
        short = ["svc"], categories = ["all"], sub = ["status"], fields = ["spec.clusterIP", "spec.type"],
        spec = false, names = NameRule::Label1035),
    resource!("", Endpoints: core::v1::Endpoints, "endpoints", "endpoints", namespaced = true,
        short = ["ep"], categories = [], sub = [], fields = [], spec = false, names = NameRule::Subdomain),
    resource!("", ConfigMap: core::v1::ConfigMap, "configmaps", "configmap", namespaced = true,
        short = ["cm"], categories = [], sub = [], fields = [], spec = false, names = NameRule::Subdomain),
    resource!("", Secret: core::v1::Secret, "secrets", "secret", namespaced = true,
        short = [], categories = [], sub = [], fields = ["type"], spec = false, names = NameRule::Subdomain),
    resource!("", ServiceAccount: core::v1::ServiceAccount, "serviceaccounts", "serviceaccount",
        namespaced = true, short = ["sa"], categories = [], sub = [], fields = [], spec = false,
        names = NameRule::Subdomain),
    resource!("", Event: core::v1::Event, "events", "event", namespaced = true,
        short = ["ev"], categories = [], sub = [],
        fields = ["involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                  "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                  "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"],
        spec = false, names = NameRule::Subdomain),
    resource!("apps", Deployment: apps::v1::Deployment, "deployments", "deployment", namespaced = true,
        short = ["deploy"], categories = ["all"], sub = ["status", "scale"], fields = [],
        spec = true, names = NameRule::Subdomain),
    resource!("apps", ReplicaSet: apps::v1::ReplicaSet, "replicasets", "replicaset", namespaced = true,
        short = ["rs"], categories = ["all"], sub = ["status", "scale"], fields = ["status.replicas"],
        spec = true, names = NameRule::Subdomain),
    resource!("apps", DaemonSet: apps::v1::DaemonSet, "daemonsets", "daemonset", namespaced = true,
        short = ["ds"], categories = ["all"], sub = ["status"], fields = [], spec = true,
        names = NameRule::Subdomain),
    resource!("discovery.k8s.io", EndpointSlice: discovery::v1::EndpointSlice, "endpointslices",
        "endpointslice", namespaced = true, short = [], categories = [], sub = [],
        fields = ["addressType"], spec = false, names = NameRule::Subdomain),
    resource!("coordination.k8s.io", Lease: coordination::v1::Lease, "leases", "lease",
        namespaced = true, short = [], categories = [], sub = [], fields = [], spec = false,
        names = NameRule::Subdomain),
];

/// The resource served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of kind `kind` in `apiVersion`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Checks a name against a DNS rule; `None` when valid, else why not.
pub fn check_name(name: &str, rule: NameRule) -> Option<String> {
    let (max, dots) = match rule {
        NameRule::Subdomain => (253, true),
        NameRule::Label | NameRule::Label1035 => (63, false),
    };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars().all(|c| alnum(c) || c == '-')
            && p.starts_with(alnum)
            && p.ends_with(alnum)
    };
    let ok = name.len() <= max
        && if dots {
            name.split('.').all(part_ok)
        } else {
            part_ok(name)
        }
        && (rule != NameRule::Label1035 || name.starts_with(|c: char| c.is_ascii_lowercase()));
    (!ok).then(|| match rule {
        NameRule::Subdomain => "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".to_string(),
        NameRule::Label => "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".to_string(),
        NameRule::Label1035 => "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character".to_string(),
    })
}

/// Rules beyond the typed schema that kube-apiserver enforces on create and update.
pub fn validate(resource: &Resource, object: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    if let Err(cause) = (resource.typed)(object) {
        causes.push(cause);
        return causes;
    }
    let pod_spec = |path: &str, spec: Option<&Value>, causes: &mut Vec<FieldCause>| {
        let containers = spec
            .and_then(|s| s.get("containers"))
            .and_then(Value::as_array);
        match containers {
            None => causes.push(FieldCause::required(format!("{path}.containers"))),
            Some(list) if list.is_empty() => {
                causes.push(FieldCause::required(format!("{path}.containers")))
            }
            Some(list) => {
                for (i, c) in list.iter().enumerate() {
                    let at = format!("{path}.containers[{i}]");
                    match c.get("name").and_then(Value::as_str) {
                        None | Some("") => causes.push(FieldCause::required(format!("{at}.name"))),
                        Some(name) => {
                            if let Some(why) = check_name(name, NameRule::Label) {
                                causes.push(FieldCause::invalid(
                                    format!("{at}.name"),
                                    format!("\"{name}\""),
                                    &why,
                                ));
                            }
                        }
                    }
                    if c.get("image")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        causes.push(FieldCause::required(format!("{at}.image")));
                    }
                }
            }
        }
    };
    match resource.kind {
        "Pod" => pod_spec("spec", object.get("spec"), &mut causes),
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            let spec = object.get("spec");
            let selector = spec.and_then(|s| s.get("selector"));
            let template_labels = spec.and_then(|s| s.pointer("/template/metadata/labels"));
            match selector
                .and_then(|s| s.get("matchLabels"))
                .and_then(Value::as_object)
            {
                None if selector.and_then(|s| s.get("matchExpressions")).is_none() => {
                    causes.push(FieldCause::required("spec.selector"))
                }
                Some(labels) => {
                    for (k, v) in labels {
                        if template_labels.and_then(|t| t.get(k)) != Some(v) {
                            causes.push(FieldCause::invalid(
                                "spec.template.metadata.labels",
                                format!("{}", template_labels.cloned().unwrap_or(json!({}))),
                                "`selector` does not match template `labels`",
                            ));
                            break;
                        }
                    }
                }
                None => {}
            }
            if let Some(replicas) = spec.and_then(|s| s.get("replicas")).and_then(Value::as_i64)
                && replicas < 0
            {
                causes.push(FieldCause::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0",
                ));
            }
            pod_spec(
                "spec.template.spec",
                spec.and_then(|s| s.pointer("/template/spec")),
                &mut causes,
            );
        }
        "Service" => {
            let spec = object.get("spec");
            let headless = spec
                .and_then(|s| s.get("clusterIP"))
                .and_then(Value::as_str)
                == Some("None");
            let external =
                spec.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("ExternalName");
            let ports = spec.and_then(|s| s.get("ports")).and_then(Value::as_array);
            if !headless && !external && ports.is_none_or(|p| p.is_empty()) {
                causes.push(FieldCause::required("spec.ports"));
            }
            for (i, port) in ports.into_iter().flatten().enumerate() {
                match port.get("port").and_then(Value::as_i64) {
                    Some(p) if (1..=65535).contains(&p) => {}
                    Some(p) => causes.push(FieldCause::invalid(
                        format!("spec.ports[{i}].port"),
                        p,
                        "must be between 1 and 65535, inclusive",
                    )),
                    None => causes.push(FieldCause::required(format!("spec.ports[{i}].port"))),
                }
                if ports.is_some_and(|p| p.len() > 1)
                    && port
                        .get("name")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                {
                    causes.push(FieldCause::required(format!("spec.ports[{i}].name")));
                }
            }
        }
        _ => {}
    }
    causes
}

fn set_default(object: &mut Value, pointer: &str, value: Value) {
    if object.pointer(pointer).is_some_and(|v| !v.is_null()) {
        return;
    }
    let mut current = object;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        // JSON pointer escapes: ~1 is '/', ~0 is '~'.
        let key = part.replace("~1", "/").replace("~0", "~");
        if !current.is_object() {
            *current = json!({});
        }
        let Some(map) = current.as_object_mut() else {
            return;
        };
        if i == parts.len() - 1 {
            map.insert(key, value);
            return;
        }
        current = map.entry(key).or_insert_with(|| json!({}));
    }
}

fn default_pod_spec(spec: &mut Value) {
    set_default(spec, "/restartPolicy", json!("Always"));
    set_default(spec, "/terminationGracePeriodSeconds", json!(30));
    set_default(spec, "/dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "/schedulerName", json!("default-scheduler"));
    set_default(spec, "/securityContext", json!({}));
    set_default(spec, "/enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers {
                let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                let tag_latest = image
                    .rsplit('/')
                    .next()
                    .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
                let pull = if tag_latest && !image.contains('@') {
                    "Always"
                } else {
                    "IfNotPresent"
                };
                set_default(c, "/imagePullPolicy", json!(pull));
                set_default(c, "/terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "/terminationMessagePolicy", json!("File"));
                set_default(c, "/resources", json!({}));
                // Requests default to limits, resource by resource.
                if let Some(limits) = c
                    .pointer("/resources/limits")
                    .and_then(Value::as_object)
                    .cloned()
                {
                    for (resource, quantity) in limits {
                        set_default(c, &format!("/resources/requests/{resource}"), quantity);
                    }
                }
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        set_default(p, "/protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// The QoS class of a pod spec (Guaranteed, Burstable, BestEffort), as kube-apiserver records it.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests");
        let limits = c.pointer("/resources/limits");
        for resource in ["cpu", "memory"] {
            let request = requests.and_then(|r| r.get(resource));
            let limit = limits.and_then(|l| l.get(resource));
            if request.is_some() || limit.is_some() {
                any = true;
            }
            match (request, limit) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Applies kube-apiserver's defaults for a new object of `resource`.
pub fn apply_defaults(resource: &Resource, object: &mut Value) {
    match resource.kind {
        "Namespace" => {
            let name = object
                .pointer("/metadata/name")
                .cloned()
                .unwrap_or(Value::Null);
            set_default(
                object,
                "/metadata/labels/kubernetes.io~1metadata.name",
                name,
            );
            set_default(object, "/spec/finalizers", json!(["kubernetes"]));
            set_default(object, "/status/phase", json!("Active"));
        }
        "Pod" => {
            if let Some(spec) = object.get_mut("spec") {
                default_pod_spec(spec);
            }
            let qos = qos_class(object.get("spec").unwrap_or(&Value::Null));
            set_default(object, "/status/phase", json!("Pending"));
            set_default(object, "/status/qosClass", json!(qos));
        }
        "Deployment" => {
            set_default(object, "/spec/replicas", json!(1));
            set_default(object, "/spec/revisionHistoryLimit", json!(10));
            set_default(object, "/spec/progressDeadlineSeconds", json!(600));
            set_default(object, "/spec/strategy/type", json!("RollingUpdate"));
            if object
                .pointer("/spec/strategy/type")
                .and_then(Value::as_str)
                == Some("RollingUpdate")
            {
                set_default(
                    object,
                    "/spec/strategy/rollingUpdate/maxSurge",
                    json!("25%"),
                );
                set_default(
                    object,
                    "/spec/strategy/rollingUpdate/maxUnavailable",
                    json!("25%"),
                );
            }
            if let Some(spec) = object.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        "ReplicaSet" => {
            set_default(object, "/spec/replicas", json!(1));
            if let Some(spec) = object.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        "DaemonSet" => {
            set_default(object, "/spec/revisionHistoryLimit", json!(10));
            set_default(object, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if object
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                == Some("RollingUpdate")
            {
                set_default(
                    object,
                    "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                    json!(1),
                );
                set_default(
                    object,
                    "/spec/updateStrategy/rollingUpdate/maxSurge",
                    json!(0),
                );
            }
            if let Some(spec) = object.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        "Service" => {
            set_default(object, "/spec/type", json!("ClusterIP"));
            set_default(object, "/spec/sessionAffinity", json!("None"));
            if object.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName") {
                set_default(object, "/spec/internalTrafficPolicy", json!("Cluster"));
                set_default(object, "/spec/ipFamilies", json!(["IPv4"]));
                set_default(object, "/spec/ipFamilyPolicy", json!("SingleStack"));
            }
            if let Some(ports) = object
                .pointer_mut("/spec/ports")
                .and_then(Value::as_array_mut)
            {
                for p in ports {
                    set_default(p, "/protocol", json!("TCP"));
                    let port = p.get("port").cloned().unwrap_or(Value::Null);
                    set_default(p, "/targetPort", port);
                }
            }
            set_default(object, "/status/loadBalancer", json!({}));
        }
        "Secret" => set_default(object, "/type", json!("Opaque")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_their_dns_rule() {
        assert_eq!(check_name("web-0", NameRule::Label), None);
        assert_eq!(check_name("a.b-c", NameRule::Subdomain), None);
        assert!(check_name("a.b", NameRule::Label).is_some());
        assert!(check_name("Web", NameRule::Subdomain).is_some());
        assert!(check_name("-a", NameRule::Subdomain).is_some());
        assert!(check_name("1svc", NameRule::Label1035).is_some());
        assert_eq!(check_name("svc1", NameRule::Label1035), None);
        assert!(check_name(&"a".repeat(64), NameRule::Label).is_some());
    }

    #[test]
    fn a_wrongly_typed_field_is_named() {
        let pods = find("", "v1", "pods").expect("pods served");
        let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" },
            "spec": { "containers": [{ "name": "c", "image": "busybox", "ports": [{ "containerPort": "eighty" }] }] } });
        let causes = validate(pods, &pod);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.containers[0].ports[0].containerPort");
    }

    #[test]
    fn pods_need_containers_with_images() {
        let pods = find("", "v1", "pods").expect("pods served");
        let pod =
            json!({ "metadata": { "name": "p" }, "spec": { "containers": [{ "name": "c" }] } });
        let fields: Vec<String> = validate(pods, &pod).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.containers[0].image"]);
        let pod = json!({ "metadata": { "name": "p" }, "spec": {} });
        let fields: Vec<String> = validate(pods, &pod).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.containers"]);
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let deployments = find("apps", "v1", "deployments").expect("served");
        let d = json!({ "metadata": { "name": "d" }, "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "db" } },
                          "spec": { "containers": [{ "name": "c", "image": "i" }] } } } });
        let fields: Vec<String> = validate(deployments, &d)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, ["spec.template.metadata.labels"]);
    }

    #[test]
    fn qos_classes() {
        let spec = |resources: Value| json!({ "containers": [{ "name": "c", "image": "i", "resources": resources }] });
        assert_eq!(qos_class(&spec(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&spec(json!({ "limits": { "cpu": "1", "memory": "1Gi" } }))),
            "Guaranteed",
            "requests default to limits"
        );
        assert_eq!(
            qos_class(&spec(
                json!({ "requests": { "cpu": "1" }, "limits": { "cpu": "2", "memory": "1Gi" } })
            )),
            "Burstable"
        );
        assert_eq!(
            qos_class(&spec(
                json!({ "requests": { "cpu": "1", "memory": "1Gi" }, "limits": { "cpu": "1", "memory": "1Gi" } })
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&spec(json!({ "requests": { "cpu": "100m" } }))),
            "Burstable"
        );
    }

    #[test]
    fn defaults_as_kube_apiserver_sets_them() {
        let services = find("", "v1", "services").expect("served");
        let mut svc = json!({ "metadata": { "name": "s" }, "spec": { "ports": [{ "port": 80 }] } });
        apply_defaults(services, &mut svc);
        assert_eq!(svc.pointer("/spec/type"), Some(&json!("ClusterIP")));
        assert_eq!(svc.pointer("/spec/ports/0/protocol"), Some(&json!("TCP")));
        assert_eq!(svc.pointer("/spec/ports/0/targetPort"), Some(&json!(80)));
        let namespaces = find("", "v1", "namespaces").expect("served");
        let mut ns = json!({ "metadata": { "name": "team-a" } });
        apply_defaults(namespaces, &mut ns);
        assert_eq!(
            ns.pointer("/metadata/labels/kubernetes.io~1metadata.name"),
            Some(&json!("team-a"))
        );
        assert_eq!(ns.pointer("/status/phase"), Some(&json!("Active")));
    }
}
