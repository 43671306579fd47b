//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the columns
//! `kubectl get` shows for each kind, computed as kube-apiserver computes them.

use serde_json::{Value, json};

use super::selectors::match_labels_string;

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        part.contains("as=Table") && part.contains("g=meta.k8s.io") && part.contains("v=v1")
    })
}

/// How long ago `timestamp` (RFC 3339) was, as kubectl prints it: `45s`, `5m12s`, `3h4m`, `6d`.
pub fn age(timestamp: Option<&str>, now: jiff::Timestamp) -> String {
    let Some(then) = timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".to_string();
    };
    let seconds = now.as_second().saturating_sub(then.as_second()).max(0);
    human_duration(seconds)
}

/// kubectl's `HumanDuration`, to the precision it uses.
pub fn human_duration(seconds: i64) -> String {
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if m < 10 {
        match seconds % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if d < 2 {
        format!("{h}h")
    } else if d < 8 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn column(name: &str, kind: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({ "name": name, "type": kind, "format": format, "description": "", "priority": priority })
}

/// Column definitions for `kind`.
pub fn columns(kind: &str) -> Vec<Value> {
    let s = |n: &str| column(n, "string", 0);
    let i = |n: &str| column(n, "integer", 0);
    let wide = |n: &str| column(n, "string", 1);
    match kind {
        "Pod" => vec![
            s("Name"),
            s("Ready"),
            s("Status"),
            column("Restarts", "string", 0),
            s("Age"),
            wide("IP"),
            wide("Node"),
            wide("Nominated Node"),
            wide("Readiness Gates"),
        ],
        "Service" => vec![
            s("Name"),
            s("Type"),
            s("Cluster-IP"),
            s("External-IP"),
            s("Port(s)"),
            s("Age"),
            wide("Selector"),
        ],
        "Deployment" => vec![
            s("Name"),
            s("Ready"),
            i("Up-to-date"),
            i("Available"),
            s("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        "ReplicaSet" => vec![
            s("Name"),
            i("Desired"),
            i("Current"),
            i("Ready"),
            s("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        "DaemonSet" => vec![
            s("Name"),
            i("Desired"),
            i("Current"),
            i("Ready"),
            i("Up-to-date"),
            i("Available"),
            s("Node Selector"),
            s("Age"),
        ],
        "Namespace" => vec![s("Name"), s("Status"), s("Age")],
        "Node" => vec![
            s("Name"),
            s("Status"),
            s("Roles"),
            s("Age"),
            s("Version"),
            wide("Internal-IP"),
        ],
        "ConfigMap" => vec![s("Name"), i("Data"), s("Age")],
        "Secret" => vec![s("Name"), s("Type"), i("Data"), s("Age")],
        "ServiceAccount" => vec![s("Name"), i("Secrets"), s("Age")],
        "Endpoints" => vec![s("Name"), s("Endpoints"), s("Age")],
        "EndpointSlice" => vec![
            s("Name"),
            s("AddressType"),
            s("Ports"),
            s("Endpoints"),
            s("Age"),
        ],
        "Lease" => vec![s("Name"), s("Holder"), s("Age")],
        "Event" => vec![
            s("Last Seen"),
            s("Type"),
            s("Reason"),
            s("Object"),
            s("Message"),
        ],
        _ => vec![s("Name"), s("Age")],
    }
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn int_at(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    }
}

fn containers_and_images(template_spec: Option<&Value>) -> (String, String) {
    let containers = template_spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let ready = statuses
        .iter()
        .filter(|s| s["ready"] == json!(true))
        .count();
    let restarts: i64 = statuses.iter().map(|s| int_at(s, "/restartCount")).sum();
    let mut reason = str_at(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = str_at(pod, "/status/phase").to_string();
    }
    for s in &statuses {
        if let Some(waiting) = s.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = waiting.to_string();
        } else if let Some(terminated) = s
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = terminated.to_string();
        }
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = "Terminating".to_string();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
    ]
}

/// The cells of one row (without the name and after it, per [`columns`]).
pub fn cells(kind: &str, object: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = json!(str_at(object, "/metadata/name"));
    let age = json!(age(
        object
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
        now
    ));
    match kind {
        "Pod" => {
            let mut row = vec![name];
            row.extend(pod_cells(object));
            row.push(age);
            row.push(json!(or_none(str_at(object, "/status/podIP").to_string())));
            row.push(json!(or_none(str_at(object, "/spec/nodeName").to_string())));
            row.push(json!(or_none(
                str_at(object, "/status/nominatedNodeName").to_string()
            )));
            row.push(json!("<none>"));
            row
        }
        "Service" => {
            let ports: Vec<String> = object
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let node_port = p
                        .get("nodePort")
                        .and_then(Value::as_i64)
                        .map(|n| format!(":{n}"))
                        .unwrap_or_default();
                    format!(
                        "{}{node_port}/{}",
                        int_at(p, "/port"),
                        str_at(p, "/protocol")
                    )
                })
                .collect();
            let external: Vec<String> = object
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            let external = if external.is_empty() {
                if str_at(object, "/spec/type") == "LoadBalancer" {
                    "<pending>".to_string()
                } else {
                    "<none>".to_string()
                }
            } else {
                external.join(",")
            };
            vec![
                name,
                json!(str_at(object, "/spec/type")),
                json!(or_none(str_at(object, "/spec/clusterIP").to_string())),
                json!(external),
                json!(or_none(ports.join(","))),
                age,
                json!(or_none(match_labels_string(
                    object.pointer("/spec/selector")
                ))),
            ]
        }
        "Deployment" => {
            let (containers, images) = containers_and_images(object.pointer("/spec/template/spec"));
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int_at(object, "/status/readyReplicas"),
                    int_at(object, "/spec/replicas")
                )),
                json!(int_at(object, "/status/updatedReplicas")),
                json!(int_at(object, "/status/availableReplicas")),
                age,
                json!(containers),
                json!(images),
                json!(match_labels_string(
                    object.pointer("/spec/selector/matchLabels")
                )),
            ]
        }
        "ReplicaSet" => {
            let (containers, images) = containers_and_images(object.pointer("/spec/template/spec"));
            vec![
                name,
                json!(int_at(object, "/spec/replicas")),
                json!(int_at(object, "/status/replicas")),
                json!(int_at(object, "/status/readyReplicas")),
                age,
                json!(containers),
                json!(images),
                json!(match_labels_string(
                    object.pointer("/spec/selector/matchLabels")
                )),
            ]
        }
        "DaemonSet" => vec![
            name,
            json!(int_at(object, "/status/desiredNumberScheduled")),
            json!(int_at(object, "/status/currentNumberScheduled")),
            json!(int_at(object, "/status/numberReady")),
            json!(int_at(object, "/status/updatedNumberScheduled")),
            json!(int_at(object, "/status/numberAvailable")),
            json!(or_none(match_labels_string(
                object.pointer("/spec/template/spec/nodeSelector")
            ))),
            age,
        ],
        "Namespace" => vec![name, json!(str_at(object, "/status/phase")), age],
        "Node" => {
            let ready = object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let status = if object.pointer("/spec/unschedulable") == Some(&json!(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let mut roles: Vec<String> = object
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            roles.sort();
            let internal = object
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
                .map(|a| str_at(a, "/address").to_string())
                .unwrap_or_default();
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                age,
                json!(str_at(object, "/status/nodeInfo/kubeletVersion")),
                json!(or_none(internal)),
            ]
        }
        "ConfigMap" => {
            let count = ["data", "binaryData"]
                .iter()
                .filter_map(|f| object.get(*f).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name, json!(count), age]
        }
        "Secret" => vec![
            name,
            json!(str_at(object, "/type")),
            json!(
                object
                    .get("data")
                    .and_then(Value::as_object)
                    .map(|m| m.len())
                    .unwrap_or(0)
            ),
            age,
        ],
        "ServiceAccount" => vec![
            name,
            json!(
                object
                    .get("secrets")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0)
            ),
            age,
        ],
        "Endpoints" => {
            let mut endpoints = Vec::new();
            for subset in object
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for address in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for port in subset
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        endpoints.push(format!(
                            "{}:{}",
                            str_at(address, "/ip"),
                            int_at(port, "/port")
                        ));
                    }
                }
            }
            vec![name, json!(or_none(endpoints.join(","))), age]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = object
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| int_at(p, "/port").to_string())
                .collect();
            let addresses: Vec<String> = object
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            vec![
                name,
                json!(str_at(object, "/addressType")),
                json!(or_none(ports.join(","))),
                json!(or_none(addresses.join(","))),
                age,
            ]
        }
        "Lease" => vec![
            name,
            json!(or_none(str_at(object, "/spec/holderIdentity").to_string())),
            age,
        ],
        "Event" => {
            let last = object
                .pointer("/lastTimestamp")
                .and_then(Value::as_str)
                .or_else(|| object.pointer("/eventTime").and_then(Value::as_str))
                .or_else(|| {
                    object
                        .pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                });
            vec![
                json!(self::age(last, now)),
                json!(str_at(object, "/type")),
                json!(str_at(object, "/reason")),
                json!(format!(
                    "{}/{}",
                    str_at(object, "/involvedObject/kind").to_lowercase(),
                    str_at(object, "/involvedObject/name")
                )),
                json!(str_at(object, "/message")),
            ]
        }
        _ => vec![name, age],
    }
}

/// One table row: cells plus the object's metadata (kubectl needs it for `-L`, `-A`, labels).
pub fn row(kind: &str, object: &Value, now: jiff::Timestamp) -> Value {
    json!({
        "cells": cells(kind, object, now),
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
        },
    })
}

/// A Table of `objects`.
pub fn table(
    kind: &str,
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    with_columns: bool,
) -> Value {
    let now = jiff::Timestamp::now();
    let rows = objects.iter().map(|o| row(kind, o, now)).collect();
    from_rows(kind, rows, resource_version, continue_token, with_columns)
}

/// A Table of rows made with [`row`].
pub fn from_rows(
    kind: &str,
    rows: Vec<Value>,
    resource_version: &str,
    continue_token: Option<&str>,
    with_columns: bool,
) -> Value {
    let mut metadata = json!({ "resourceVersion": resource_version });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "rows": rows,
    });
    if with_columns {
        table["columnDefinitions"] = json!(columns(kind));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 120), "4h2m");
        assert_eq!(human_duration(3 * 86400), "3d");
    }

    #[test]
    fn pod_row_has_the_usual_columns() {
        let pod = json!({ "metadata": { "name": "web-0", "creationTimestamp": "2026-01-01T00:00:00Z" },
            "spec": { "containers": [{ "name": "a" }, { "name": "b" }], "nodeName": "n1" },
            "status": { "phase": "Running", "podIP": "10.244.0.5",
                "containerStatuses": [{ "ready": true, "restartCount": 2 }, { "ready": false, "restartCount": 1,
                                        "state": { "waiting": { "reason": "CrashLoopBackOff" } } }] } });
        let now: jiff::Timestamp = "2026-01-01T00:00:30Z".parse().expect("time");
        let cells = cells("Pod", &pod, now);
        assert_eq!(
            cells[..5],
            [
                json!("web-0"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3"),
                json!("30s")
            ]
        );
        assert_eq!(cells.len(), columns("Pod").len());
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        let now = jiff::Timestamp::now();
        for r in super::super::resources::RESOURCES {
            assert_eq!(
                cells(r.kind, &json!({ "metadata": { "name": "x" } }), now).len(),
                columns(r.kind).len(),
                "{}",
                r.kind
            );
        }
    }
}
