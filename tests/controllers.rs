//! The controllers that run inside `windlass server`, observed through the API as a user would,
//! with fake nodes registered through the API. Each check runs on SQLite (the store is not what
//! these exercise; the store suite covers etcd).

use std::time::Duration;

use serde_json::Value;
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::prereq::kubectls;
use windlass_tests::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(20);

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn get(server: &TestServer, path: &str) -> Option<Value> {
    let (code, body) = server.curl(
        "GET",
        path,
        Some(&server.admin_token()),
        None,
        "application/json",
    );
    (code == 200).then(|| json(&body))
}

fn post(server: &TestServer, path: &str, body: &str) {
    let (code, out) = server.curl(
        "POST",
        path,
        Some(&server.admin_token()),
        Some(body),
        "application/json",
    );
    assert_eq!(code, 201, "POST {path}: {out}");
}

fn delete(server: &TestServer, path: &str) {
    let (code, out) = server.curl(
        "DELETE",
        path,
        Some(&server.admin_token()),
        None,
        "application/json",
    );
    assert_eq!(code, 200, "DELETE {path}: {out}");
}

#[test]
fn every_namespace_gets_a_default_service_account() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    post(
        &server,
        "/api/v1/namespaces",
        r#"{"metadata":{"name":"team"}}"#,
    );
    eventually("the default ServiceAccount", PATIENCE, || {
        get(&server, "/api/v1/namespaces/team/serviceaccounts/default")
    });
    eventually(
        "default ServiceAccounts in the system namespaces",
        PATIENCE,
        || {
            get(
                &server,
                "/api/v1/namespaces/kube-system/serviceaccounts/default",
            )
        },
    );
    delete(&server, "/api/v1/namespaces/team/serviceaccounts/default");
    eventually("the default ServiceAccount re-created", PATIENCE, || {
        get(&server, "/api/v1/namespaces/team/serviceaccounts/default")
    });
}

fn pod_cidr(server: &TestServer, node: &str) -> Option<String> {
    get(server, &format!("/api/v1/nodes/{node}"))?
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .map(String::from)
}

#[test]
fn nodes_get_distinct_pod_cidrs_released_on_delete() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    for node in ["n1", "n2", "n3"] {
        post(
            &server,
            "/api/v1/nodes",
            &format!(r#"{{"metadata":{{"name":"{node}"}}}}"#),
        );
    }
    let mut cidrs: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            eventually(&format!("a pod CIDR on {n}"), PATIENCE, || {
                pod_cidr(&server, n)
            })
        })
        .collect();
    let n2 = cidrs[1].clone();
    cidrs.sort();
    assert_eq!(cidrs, ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]);
    let node = get(&server, "/api/v1/nodes/n1").expect("n1");
    assert_eq!(
        node.pointer("/spec/podCIDRs/0").and_then(Value::as_str),
        node.pointer("/spec/podCIDR").and_then(Value::as_str)
    );

    // n2's range goes back to the pool with n2, and the next node gets it.
    delete(&server, "/api/v1/nodes/n2");
    post(&server, "/api/v1/nodes", r#"{"metadata":{"name":"n4"}}"#);
    let reused = eventually("a pod CIDR on n4", PATIENCE, || pod_cidr(&server, "n4"));
    assert_eq!(reused, n2, "the lowest free range is the one n2 released");
}

#[test]
fn deleting_a_namespace_removes_its_objects_then_the_namespace() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    let k = &kubectls()[0];
    server.kubectl_ok(k, &["create", "namespace", "doomed"]);
    server.kubectl_ok(
        k,
        &[
            "-n",
            "doomed",
            "create",
            "configmap",
            "c",
            "--from-literal=a=b",
        ],
    );
    server.kubectl_ok(
        k,
        &[
            "-n",
            "doomed",
            "create",
            "deployment",
            "d",
            "--image=windlass.local/busybox:latest",
        ],
    );
    post(
        &server,
        "/api/v1/namespaces/doomed/services",
        r#"{"metadata":{"name":"s"},"spec":{"clusterIP":"10.96.50.50","ports":[{"port":80}]}}"#,
    );
    server.kubectl_ok(k, &["delete", "namespace", "doomed", "--wait=false"]);

    eventually("the namespace gone", PATIENCE, || {
        get(&server, "/api/v1/namespaces/doomed")
            .is_none()
            .then_some(())
    });
    for path in [
        "/api/v1/namespaces/doomed/configmaps/c",
        "/apis/apps/v1/namespaces/doomed/deployments/d",
        "/api/v1/namespaces/doomed/services/s",
    ] {
        assert!(
            get(&server, path).is_none(),
            "{path} outlived its namespace"
        );
    }
    // The Service's ClusterIP was released with it.
    post(
        &server,
        "/api/v1/namespaces",
        r#"{"metadata":{"name":"next"}}"#,
    );
    post(
        &server,
        "/api/v1/namespaces/next/services",
        r#"{"metadata":{"name":"s"},"spec":{"clusterIP":"10.96.50.50","ports":[{"port":80}]}}"#,
    );
    // Creating in a namespace that is gone is refused.
    let (code, _) = server.curl(
        "POST",
        "/api/v1/namespaces/doomed/configmaps",
        Some(&server.admin_token()),
        Some(r#"{"metadata":{"name":"late"}}"#),
        "application/json",
    );
    assert_eq!(code, 404);
}
