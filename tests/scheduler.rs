//! The scheduler and the ReplicaSet controller inside `windlass server`, with fake nodes and a
//! fake kubelet, observed through the API.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::fake_kubelet::{FakeKubelet, register_node};
use windlass_tests::prereq::kubectls;
use windlass_tests::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(30);

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Live pods (not terminating) of `app` in default, as (name, node).
fn pods(server: &TestServer, app: &str) -> Vec<(String, Option<String>)> {
    let (code, body) = server.curl(
        "GET",
        &format!("/api/v1/namespaces/default/pods?labelSelector=app%3D{app}"),
        Some(&server.admin_token()),
        None,
        "",
    );
    assert_eq!(code, 200, "{body}");
    json(&body)["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .map(String::from),
            )
        })
        .collect()
}

const REPLICASET: &str = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web, namespace: default}
spec:
  replicas: 5
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: windlass.local/busybox:latest
        resources: {requests: {cpu: 100m, memory: 64Mi}}
"#;

#[test]
fn replicaset_pods_are_bound_spread_and_scaled() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    let nodes = ["n1", "n2", "n3"];
    for n in nodes {
        register_node(&server.kubeconfig(), n, "4", "8Gi").expect("register node");
    }
    let _kubelet = FakeKubelet::start(&server.kubeconfig(), &nodes).expect("fake kubelet");
    let k = &kubectls()[0];
    let manifest = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(manifest.path(), REPLICASET).expect("write");
    server.kubectl_ok(k, &["apply", "-f", manifest.path().to_str().expect("path")]);

    let bound = |want: usize| {
        eventually(&format!("{want} bound pods"), PATIENCE, || {
            let p = pods(&server, "web");
            (p.len() == want && p.iter().all(|(_, n)| n.is_some())).then_some(p)
        })
    };
    let placed = bound(5);
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (_, node) in &placed {
        *per_node
            .entry(node.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        3,
        "5 pods spread over all 3 nodes: {per_node:?}"
    );
    assert!(
        per_node.values().all(|n| (1..=2).contains(n)),
        "{per_node:?}"
    );

    server.kubectl_ok(k, &["scale", "replicaset", "web", "--replicas=10"]);
    bound(10);
    server.kubectl_ok(k, &["scale", "replicaset", "web", "--replicas=2"]);
    bound(2);
    eventually("status with 2 ready replicas", PATIENCE, || {
        let out = server.kubectl_ok(
            k,
            &[
                "get",
                "rs",
                "web",
                "-o",
                "jsonpath={.status.replicas} {.status.readyReplicas}",
            ],
        );
        (out.trim() == "2 2").then_some(())
    });
    // Deleting one pod gets a replacement.
    let (victim, _) = pods(&server, "web").remove(0);
    server.kubectl_ok(k, &["delete", "pod", &victim]);
    eventually("a replacement pod", PATIENCE, || {
        let p = pods(&server, "web");
        (p.len() == 2
            && p.iter()
                .all(|(name, node)| *name != victim && node.is_some()))
        .then_some(())
    });
}

#[test]
fn a_pod_that_fits_nowhere_waits_with_a_reason_and_binds_when_a_node_has_room() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    register_node(&server.kubeconfig(), "small", "1", "2Gi").expect("register node");
    let token = server.admin_token();
    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&token),
        Some(r#"{"metadata":{"name":"big","labels":{"app":"big"}},"spec":{"containers":[{"name":"c","image":"windlass.local/busybox:latest","resources":{"requests":{"cpu":"3"}}}]}}"#),
        "application/json",
    );
    assert_eq!(code, 201, "{body}");
    let message = eventually("a FailedScheduling event", PATIENCE, || {
        let (_, body) = server.curl(
            "GET",
            "/api/v1/namespaces/default/events?fieldSelector=reason%3DFailedScheduling",
            Some(&token),
            None,
            "",
        );
        json(&body)["items"]
            .as_array()
            .and_then(|e| e.first())
            .and_then(|e| e["message"].as_str())
            .map(String::from)
    });
    assert_eq!(message, "0/1 nodes are available: 1 Insufficient cpu.");
    let (_, body) = server.curl(
        "GET",
        "/api/v1/namespaces/default/pods/big",
        Some(&token),
        None,
        "",
    );
    let pod = json(&body);
    assert!(
        pod.pointer("/spec/nodeName").is_none(),
        "still pending: {pod}"
    );
    assert_eq!(
        pod.pointer("/status/conditions/0/reason")
            .and_then(Value::as_str),
        Some("Unschedulable")
    );

    register_node(&server.kubeconfig(), "large", "8", "16Gi").expect("register node");
    let node = eventually("the pod bound", PATIENCE, || {
        pods(&server, "big").first().and_then(|(_, n)| n.clone())
    });
    assert_eq!(node, "large");
}

fn replicaset_with_pods(server: &TestServer, name: &str, replicas: usize) {
    let k = &kubectls()[0];
    let manifest = tempfile::NamedTempFile::new().expect("temp file");
    let text = REPLICASET
        .replace("name: web", &format!("name: {name}"))
        .replace("app: web", &format!("app: {name}"))
        .replace("replicas: 5", &format!("replicas: {replicas}"));
    std::fs::write(manifest.path(), text).expect("write");
    server.kubectl_ok(k, &["apply", "-f", manifest.path().to_str().expect("path")]);
    eventually(&format!("{replicas} pods of {name}"), PATIENCE, || {
        (pods(server, name).len() == replicas).then_some(())
    });
}

fn exists(server: &TestServer, path: &str) -> bool {
    server
        .curl("GET", path, Some(&server.admin_token()), None, "")
        .0
        == 200
}

#[test]
fn owners_take_their_dependents_with_them_unless_told_to_orphan() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    register_node(&server.kubeconfig(), "n1", "8", "16Gi").expect("register node");
    let _kubelet = FakeKubelet::start(&server.kubeconfig(), &["n1"]).expect("fake kubelet");
    let k = &kubectls()[0];

    // Background (kubectl's default): the owner goes at once, its pods after it.
    replicaset_with_pods(&server, "bg", 3);
    server.kubectl_ok(k, &["delete", "replicaset", "bg"]);
    eventually("bg's pods collected", PATIENCE, || {
        pods(&server, "bg").is_empty().then_some(())
    });

    // Orphan: the pods stay, without the owner reference.
    replicaset_with_pods(&server, "orphans", 2);
    server.kubectl_ok(k, &["delete", "replicaset", "orphans", "--cascade=orphan"]);
    eventually("the orphaning owner gone", PATIENCE, || {
        (!exists(
            &server,
            "/apis/apps/v1/namespaces/default/replicasets/orphans",
        ))
        .then_some(())
    });
    let left = pods(&server, "orphans");
    assert_eq!(left.len(), 2, "orphans survive their owner");
    for (name, _) in &left {
        let (_, body) = server.curl(
            "GET",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            Some(&server.admin_token()),
            None,
            "",
        );
        assert!(
            json(&body).pointer("/metadata/ownerReferences/0").is_none(),
            "{name} still names its owner: {body}"
        );
    }

    // Foreground: the owner waits, marked for deletion, until its pods are gone.
    replicaset_with_pods(&server, "fg", 2);
    let (code, body) = server.curl(
        "DELETE",
        "/apis/apps/v1/namespaces/default/replicasets/fg",
        Some(&server.admin_token()),
        Some(r#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Foreground"}"#),
        "application/json",
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "foregroundDeletion")),
        "{body}"
    );
    eventually("fg and its pods gone", PATIENCE, || {
        (pods(&server, "fg").is_empty()
            && !exists(&server, "/apis/apps/v1/namespaces/default/replicasets/fg"))
        .then_some(())
    });
}
