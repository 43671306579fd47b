//! Discovery documents: `/api`, `/apis`, each group version's resource list, and `/version`,
//! built from the served-resource registry.

use serde_json::{Value, json};

use super::resources::{RESOURCES, Resource};

/// The Kubernetes version this server reports (the API it implements).
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

/// `/version`.
pub fn version() -> Value {
    let (major, minor) = KUBERNETES_VERSION;
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0+windlass-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", go_arch()),
    })
}

/// The architecture as Go (and so every Kubernetes client) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

/// The groups (other than core) served, in a stable order.
fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

/// `/apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let gv = json!({ "groupVersion": format!("{g}/v1"), "version": "v1" });
            json!({ "name": g, "versions": [gv], "preferredVersion": gv })
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/<group>`.
pub fn group(name: &str) -> Option<Value> {
    groups().contains(&name).then(|| {
        let gv = json!({ "groupVersion": format!("{name}/v1"), "version": "v1" });
        json!({ "kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": [gv], "preferredVersion": gv })
    })
}

fn verbs(resource: &Resource) -> Vec<&'static str> {
    vec![
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    .into_iter()
    .filter(|v| *v != "deletecollection" || resource.kind != "Namespace")
    .collect()
}

/// `/api/v1` or `/apis/<group>/v1`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in served {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r),
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for sub in r.subresources {
            let (kind, sub_verbs, group_version) = match *sub {
                "scale" => (
                    "Scale",
                    vec!["get", "patch", "update"],
                    Some(("autoscaling", "v1")),
                ),
                "binding" => ("Binding", vec!["create"], None),
                "finalize" => (r.kind, vec!["update"], None),
                _ => (r.kind, vec!["get", "patch", "update"], None),
            };
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": sub_verbs,
            });
            if let Some((g, v)) = group_version {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// Whether an Accept header asks for aggregated discovery, and in which version
/// (`apidiscovery.k8s.io/v2` or `v2beta1`).
pub fn wants_aggregated(accept: &str) -> Option<&'static str> {
    accept
        .split(',')
        .filter(|part| {
            part.contains("as=APIGroupDiscoveryList") && part.contains("g=apidiscovery.k8s.io")
        })
        .find_map(|part| {
            if part.contains("v=v2beta1") {
                Some("v2beta1")
            } else if part.contains("v=v2") {
                Some("v2")
            } else {
                None
            }
        })
}

/// The Content-Type of an aggregated discovery answer.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// Aggregated discovery: every group's versions and resources in one document, for `/api`
/// (`core` = true) or `/apis`.
pub fn aggregated(core: bool, version: &str) -> Value {
    let mut group_names: Vec<&str> = if core { vec![""] } else { groups() };
    group_names.dedup();
    let items: Vec<Value> = group_names
        .into_iter()
        .map(|group| {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group == group)
                .map(|r| {
                    let subresources: Vec<Value> = r
                        .subresources
                        .iter()
                        .map(|sub| {
                            let (kind, g, v, verbs) = match *sub {
                                "scale" => ("Scale", "autoscaling", "v1", vec!["get", "patch", "update"]),
                                "binding" => ("Binding", "", "v1", vec!["create"]),
                                "finalize" => (r.kind, r.group, r.version, vec!["update"]),
                                _ => (r.kind, r.group, r.version, vec!["get", "patch", "update"]),
                            };
                            json!({ "subresource": sub, "responseKind": { "group": g, "version": v, "kind": kind }, "verbs": verbs })
                        })
                        .collect();
                    json!({
                        "resource": r.plural,
                        "responseKind": { "group": r.group, "version": r.version, "kind": r.kind },
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": verbs(r),
                        "shortNames": r.short_names,
                        "categories": r.categories,
                        "subresources": subresources,
                    })
                })
                .collect();
            json!({
                "metadata": { "name": group },
                "versions": [{ "version": "v1", "resources": resources, "freshness": "Current" }],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_lists_every_served_resource_once() {
        assert_eq!(
            wants_aggregated(
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
            ),
            Some("v2")
        );
        assert_eq!(wants_aggregated("application/json"), None);
        let core = aggregated(true, "v2");
        let apis = aggregated(false, "v2");
        let count = |doc: &Value| -> usize {
            doc["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|g| {
                            g["versions"][0]["resources"]
                                .as_array()
                                .map(Vec::len)
                                .unwrap_or(0)
                        })
                        .sum()
                })
                .unwrap_or(0)
        };
        assert_eq!(count(&core) + count(&apis), RESOURCES.len());
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let deployments = apis["items"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["metadata"]["name"] == "apps"))
            .and_then(|g| {
                g["versions"][0]["resources"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["resource"] == "deployments"))
            })
            .expect("deployments served");
        assert_eq!(deployments["scope"], "Namespaced");
        assert_eq!(
            deployments["subresources"][1]["responseKind"]["kind"],
            "Scale"
        );
    }
}
