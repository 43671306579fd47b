//! `windlass server` against real clients (Debian's kubectl 1.20, any other kubectl on PATH, and
//! curl for exact status codes), on both stores. Each check runs once per store.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::prereq::{kubectls, python_client};

macro_rules! per_store {
    ($($check:ident),* $(,)?) => {
        mod on_sqlite { $( #[test] fn $check() { super::$check(super::Backend::Sqlite); } )* }
        mod on_etcd { $( #[test] fn $check() { super::$check(super::Backend::Etcd); } )* }
    };
}

per_store!(
    delete_collection_removes_what_the_selector_picks,
    nodes_join_and_write_only_their_own_objects,
    watch_from_a_compacted_revision_gets_410,
    watches_share_one_store_watch_per_resource,
    python_client_works_unmodified,
    kubectl_apply_of_a_multi_document_manifest_then_edit,
    kubectl_creates_lists_labels_scales_and_deletes,
    kubectl_watch_sees_changes_live,
    stale_update_is_409_and_invalid_object_is_422_naming_the_field,
    requests_without_a_valid_token_get_401,
    kill_9_loses_no_acknowledged_write,
    lists_page_with_limit_and_continue,
    cluster_ips_are_never_handed_out_twice_and_are_released,
);

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn kubectl_creates_lists_labels_scales_and_deletes(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    for (i, k) in kubectls().iter().enumerate() {
        let ns = format!("team-{i}");
        server.kubectl_ok(k, &["create", "namespace", &ns]);
        let table = server.kubectl_ok(k, &["get", "namespaces"]);
        assert!(
            table.lines().next().is_some_and(
                |h| h.split_whitespace().collect::<Vec<_>>() == ["NAME", "STATUS", "AGE"]
            ),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&ns) && l.contains("Active")),
            "{table}"
        );

        server.kubectl_ok(
            k,
            &[
                "-n",
                &ns,
                "create",
                "configmap",
                "cfg",
                "--from-literal=a=1",
                "--from-literal=b=2",
            ],
        );
        let yaml = server.kubectl_ok(k, &["-n", &ns, "get", "configmap", "cfg", "-o", "yaml"]);
        for needle in [
            "kind: ConfigMap",
            "name: cfg",
            &format!("namespace: {ns}"),
            "resourceVersion:",
            "uid:",
            "creationTimestamp:",
        ] {
            assert!(yaml.contains(needle), "{needle} in:\n{yaml}");
        }
        server.kubectl_ok(k, &["-n", &ns, "label", "configmap", "cfg", "app=x"]);
        let labelled = server.kubectl_ok(
            k,
            &["-n", &ns, "get", "configmaps", "-l", "app=x", "-o", "name"],
        );
        assert_eq!(labelled.trim(), "configmap/cfg");
        let none = server.kubectl_ok(
            k,
            &[
                "-n",
                &ns,
                "get",
                "configmaps",
                "-l",
                "app in (y,z)",
                "-o",
                "name",
            ],
        );
        assert_eq!(none.trim(), "");
        let by_field = server.kubectl_ok(
            k,
            &[
                "-n",
                &ns,
                "get",
                "configmaps",
                "--field-selector",
                "metadata.name=cfg",
                "-o",
                "name",
            ],
        );
        assert_eq!(by_field.trim(), "configmap/cfg");

        server.kubectl_ok(
            k,
            &[
                "-n",
                &ns,
                "create",
                "deployment",
                "web",
                "--image=windlass.local/busybox:latest",
                "--replicas=2",
            ],
        );
        let deployments = server.kubectl_ok(k, &["-n", &ns, "get", "deployments"]);
        let header: Vec<&str> = deployments
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            "{deployments}"
        );
        assert!(deployments.contains("0/2"), "{deployments}");
        server.kubectl_ok(
            k,
            &["-n", &ns, "scale", "deployment", "web", "--replicas=5"],
        );
        let replicas = server.kubectl_ok(
            k,
            &[
                "-n",
                &ns,
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.spec.replicas} {.metadata.generation}",
            ],
        );
        assert_eq!(
            replicas.trim(),
            "5 2",
            "scale changes spec.replicas and bumps the generation"
        );

        server.kubectl_ok(
            k,
            &[
                "-n",
                &ns,
                "create",
                "service",
                "clusterip",
                "web",
                "--tcp=80:8080",
            ],
        );
        let services = server.kubectl_ok(k, &["-n", &ns, "get", "services"]);
        let row: Vec<&str> = services
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(row[..2], ["web", "ClusterIP"], "{services}");
        assert!(
            row[2].starts_with("10.96."),
            "allocated from the service CIDR: {services}"
        );
        assert_eq!(row[4], "80/TCP");

        server.kubectl_ok(k, &["-n", &ns, "delete", "configmap", "cfg"]);
        let gone = server.kubectl(k, &["-n", &ns, "get", "configmap", "cfg"]);
        assert!(!gone.status.success());
        assert!(
            String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
            "{}",
            String::from_utf8_lossy(&gone.stderr)
        );
        // The controllers inside the server give the Deployment its 5 pods; with no nodes they
        // stay Pending.
        let pods = windlass_tests::wait::eventually(
            "the deployment's 5 pods",
            Duration::from_secs(20),
            || {
                let out = server.kubectl_ok(
                    k,
                    &["-n", &ns, "get", "pods", "-l", "app=web", "--no-headers"],
                );
                (out.lines().count() == 5).then_some(out)
            },
        );
        assert!(pods.lines().all(|l| l.contains("Pending")), "{pods}");
    }
}

const MANIFEST: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: NS
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: NS
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: NS
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: windlass.local/busybox:latest
        command: ["httpd", "-f", "-p", "8080"]
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: NS
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

fn kubectl_apply_of_a_multi_document_manifest_then_edit(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let dir = tempfile::tempdir().expect("temp dir");
    for (i, k) in kubectls().iter().enumerate() {
        let ns = format!("shop-{i}");
        let manifest = dir.path().join(format!("app-{i}.yaml"));
        let write = |text: &str| {
            std::fs::write(&manifest, text.replace("NS", &ns)).expect("write manifest")
        };
        let path = manifest.to_str().expect("utf-8 path");
        write(MANIFEST);
        // No --validate=false: kubectl fetches /openapi/v2 (protobuf) first.
        let first = server.kubectl_ok(k, &["apply", "-f", path]);
        for line in [
            format!("namespace/{ns} created"),
            "configmap/web-config created".into(),
            "deployment.apps/web created".into(),
            "service/web created".into(),
        ] {
            assert!(first.contains(&line), "{line} in:\n{first}");
        }
        let again = server.kubectl_ok(k, &["apply", "-f", path]);
        assert_eq!(
            again.matches("unchanged").count(),
            4,
            "re-applying changes nothing:\n{again}"
        );
        write(
            &MANIFEST
                .replace("replicas: 2", "replicas: 4")
                .replace("greeting: hello", "greeting: bonjour"),
        );
        let changed = server.kubectl_ok(k, &["apply", "-f", path]);
        assert!(
            changed.contains("configmap/web-config configured")
                && changed.contains("deployment.apps/web configured"),
            "{changed}"
        );
        assert!(changed.contains("service/web unchanged"), "{changed}");
        let state = server.kubectl_ok(k, &["-n", &ns, "get", "deployment", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort}"]);
        assert_eq!(state.trim(), "4 8080");

        // kubectl edit with a scripted editor sends a strategic merge patch.
        let editor = dir.path().join(format!("editor-{i}.sh"));
        std::fs::write(
            &editor,
            "#!/bin/sh\nsed -i 's/greeting: bonjour/greeting: edited/' \"$1\"\n",
        )
        .expect("write editor");
        std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let out = Command::new(k)
            .args(["-n", &ns, "edit", "configmap", "web-config"])
            .env("KUBECONFIG", server.kubeconfig())
            .env("EDITOR", &editor)
            .output()
            .expect("run kubectl edit");
        assert!(
            out.status.success(),
            "edit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let greeting = server.kubectl_ok(
            k,
            &[
                "-n",
                &ns,
                "get",
                "configmap",
                "web-config",
                "-o",
                "jsonpath={.data.greeting}",
            ],
        );
        assert_eq!(greeting, "edited");

        // An invalid object in a manifest is rejected by the server, naming the field.
        write(&MANIFEST.replace("containerPort: 8080", "containerPort: http"));
        let bad = server.kubectl(k, &["apply", "-f", path]);
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success(), "an invalid manifest must fail");
        assert!(stderr.contains("containerPort"), "{stderr}");
    }
}

fn delete_collection_removes_what_the_selector_picks(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let token = server.admin_token();
    for (name, app) in [("a", "x"), ("b", "x"), ("c", "x"), ("d", "y"), ("e", "y")] {
        let body = format!(r#"{{"metadata":{{"name":"{name}","labels":{{"app":"{app}"}}}}}}"#);
        let (code, out) = server.curl(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(&token),
            Some(&body),
            "application/json",
        );
        assert_eq!(code, 201, "{out}");
    }
    let (code, body) = server.curl(
        "DELETE",
        "/api/v1/namespaces/default/configmaps?labelSelector=app%3Dx",
        Some(&token),
        None,
        "application/json",
    );
    assert_eq!(code, 200, "{body}");
    let deleted: Vec<String> = json(&body)["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(deleted, ["a", "b", "c"]);
    let (_, body) = server.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps",
        Some(&token),
        None,
        "application/json",
    );
    let left: Vec<String> = json(&body)["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(left, ["d", "e"]);
}

fn nodes_join_and_write_only_their_own_objects(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let admin = server.admin_token();
    let join_token =
        std::fs::read_to_string(server.data_dir().join("pki/node-join.token")).expect("join token");
    let join = |token: &str, node: &str| {
        server.curl(
            "POST",
            "/windlass/v1/join",
            Some(token),
            Some(&format!(r#"{{"node":"{node}"}}"#)),
            "application/json",
        )
    };
    assert_eq!(join("wrong", "n1").0, 401);
    assert_eq!(
        join(&admin, "n1").0,
        401,
        "the admin token is not the join token"
    );
    let (code, kubeconfig) = join(join_token.trim(), "n1");
    assert_eq!(code, 200, "{kubeconfig}");
    let config = json(&kubeconfig);
    assert_eq!(config["users"][0]["name"], "system:node:n1");
    let node = config["users"][0]["user"]["token"]
        .as_str()
        .expect("node token")
        .to_string();
    let node = node.as_str();

    let post = |token: &str, path: &str, body: &str| {
        server
            .curl("POST", path, Some(token), Some(body), "application/json")
            .0
    };
    assert_eq!(
        post(node, "/api/v1/nodes", r#"{"metadata":{"name":"n1"}}"#),
        201,
        "a node registers itself"
    );
    assert_eq!(
        post(node, "/api/v1/nodes", r#"{"metadata":{"name":"n2"}}"#),
        403,
        "but not another node"
    );
    assert_eq!(
        post(
            admin.as_str(),
            "/api/v1/nodes",
            r#"{"metadata":{"name":"n2"}}"#
        ),
        201
    );
    assert_eq!(
        server.curl("GET", "/api/v1/nodes", Some(node), None, "").0,
        200
    );
    let merge = |token: &str, path: &str, body: &str| {
        server
            .curl(
                "PATCH",
                path,
                Some(token),
                Some(body),
                "application/merge-patch+json",
            )
            .0
    };
    assert_eq!(
        merge(
            node,
            "/api/v1/nodes/n1/status",
            r#"{"status":{"phase":"Running"}}"#
        ),
        200
    );
    assert_eq!(
        merge(
            node,
            "/api/v1/nodes/n2/status",
            r#"{"status":{"phase":"Running"}}"#
        ),
        403
    );

    let lease = |name: &str| {
        format!(r#"{{"metadata":{{"name":"{name}"}},"spec":{{"holderIdentity":"{name}"}}}}"#)
    };
    assert_eq!(
        post(
            node,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            &lease("n1")
        ),
        201
    );
    assert_eq!(
        post(
            node,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            &lease("n2")
        ),
        403
    );
    assert_eq!(
        post(
            node,
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            &lease("n1")
        ),
        403
    );

    let pod = |name: &str, on: &str| {
        format!(
            r#"{{"metadata":{{"name":"{name}"}},"spec":{{"nodeName":"{on}","containers":[{{"name":"c","image":"windlass.local/busybox:latest"}}]}}}}"#
        )
    };
    assert_eq!(
        post(
            node,
            "/api/v1/namespaces/default/pods",
            &pod("sneaky", "n1")
        ),
        403,
        "nodes do not create ordinary pods"
    );
    assert_eq!(
        post(
            admin.as_str(),
            "/api/v1/namespaces/default/pods",
            &pod("mine", "n1")
        ),
        201
    );
    assert_eq!(
        post(
            admin.as_str(),
            "/api/v1/namespaces/default/pods",
            &pod("theirs", "n2")
        ),
        201
    );
    assert_eq!(
        merge(
            node,
            "/api/v1/namespaces/default/pods/mine/status",
            r#"{"status":{"phase":"Running"}}"#
        ),
        200
    );
    assert_eq!(
        merge(
            node,
            "/api/v1/namespaces/default/pods/theirs/status",
            r#"{"status":{"phase":"Running"}}"#
        ),
        403
    );
    assert_eq!(
        merge(
            node,
            "/api/v1/namespaces/default/pods/mine",
            r#"{"metadata":{"labels":{"x":"y"}}}"#
        ),
        403,
        "spec and metadata stay the owner's"
    );
    assert_eq!(
        server
            .curl(
                "DELETE",
                "/api/v1/namespaces/default/pods/theirs",
                Some(node),
                None,
                ""
            )
            .0,
        403
    );
    let (code, body) = server.curl(
        "DELETE",
        "/api/v1/namespaces/default/pods/mine",
        Some(node),
        None,
        "",
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["metadata"]["deletionTimestamp"].is_string(),
        "a bound pod is deleted gracefully: {body}"
    );

    assert_eq!(
        server
            .curl(
                "GET",
                "/api/v1/namespaces/default/configmaps",
                Some(node),
                None,
                ""
            )
            .0,
        200
    );
    assert_eq!(
        post(
            node,
            "/api/v1/namespaces/default/configmaps",
            r#"{"metadata":{"name":"c"}}"#
        ),
        403
    );
    assert_eq!(
        post(
            node,
            "/api/v1/namespaces/default/events",
            r#"{"metadata":{"name":"e"},"involvedObject":{"kind":"Node","name":"n1"},"reason":"Started"}"#
        ),
        201
    );
    let (code, body) = server.curl("GET", "/apis/apps/v1/deployments", Some(node), None, "");
    assert_eq!(code, 403);
    assert!(
        json(&body)["message"]
            .as_str()
            .is_some_and(|m| m.contains("system:node:n1")),
        "{body}"
    );

    // kubectl with the node's kubeconfig sees the same rules.
    let node_kubeconfig = server.data_dir().join("n1.kubeconfig");
    std::fs::write(&node_kubeconfig, &kubeconfig).expect("write node kubeconfig");
    let k = &kubectls()[0];
    let out = Command::new(k)
        .args(["get", "nodes", "-o", "name"])
        .env("KUBECONFIG", &node_kubeconfig)
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["node/n1", "node/n2"]
    );
    let out = Command::new(k)
        .args(["delete", "node", "n2"])
        .env("KUBECONFIG", &node_kubeconfig)
        .output()
        .expect("kubectl");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Forbidden")
            || String::from_utf8_lossy(&out.stderr).contains("forbidden")
    );

    // Joining again rotates the token: the old one stops working.
    let (code, _) = join(join_token.trim(), "n1");
    assert_eq!(code, 200);
    assert_eq!(
        server.curl("GET", "/api/v1/nodes", Some(node), None, "").0,
        401
    );
}

fn watch_from_a_compacted_revision_gets_410(backend: Backend) {
    let server = TestServer::start_with(backend, &["--compaction-interval-seconds", "1"])
        .expect("start windlass server");
    let token = server.admin_token();
    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(&token),
        Some(r#"{"metadata":{"name":"old"},"data":{"v":"0"}}"#),
        "application/json",
    );
    assert_eq!(code, 201, "{body}");
    let first = json(&body)["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse::<i64>()
        .expect("number");
    for v in 1..5 {
        let patch = format!(r#"{{"data":{{"v":"{v}"}}}}"#);
        let (code, body) = server.curl(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/old",
            Some(&token),
            Some(&patch),
            "application/merge-patch+json",
        );
        assert_eq!(code, 200, "{body}");
    }
    // Compaction runs every second to the revision seen a second before; within a bounded
    // number of attempts a watch from before the first write must be refused with 410.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={}&timeoutSeconds=1",
            first - 1
        );
        let (code, body) = server.curl("GET", &path, Some(&token), None, "application/json");
        assert_eq!(code, 200, "watch errors arrive as events: {body}");
        let first_event = json(body.lines().next().unwrap_or("{}"));
        if first_event["type"] == "ERROR" {
            assert_eq!(first_event["object"]["code"], 410, "{first_event}");
            assert_eq!(first_event["object"]["reason"], "Expired");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "history was never compacted: {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The object itself is intact, and a fresh watch works.
    let (code, body) = server.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps/old",
        Some(&token),
        None,
        "application/json",
    );
    assert_eq!(code, 200);
    assert_eq!(json(&body)["data"]["v"], "4");
}

fn metric(server: &TestServer, name: &str) -> i64 {
    let (code, text) = server.curl(
        "GET",
        "/metrics",
        Some(&server.admin_token()),
        None,
        "text/plain",
    );
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

fn watches_share_one_store_watch_per_resource(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let token = server.admin_token();
    let ca = server.data_dir().join("pki/ca.crt");
    let mut clients = Vec::new();
    for (resource, count) in [("pods", 20), ("configmaps", 10)] {
        for _ in 0..count {
            let mut child = Command::new("curl")
                .args(["-sSN", "--max-time", "30", "--cacert"])
                .arg(&ca)
                .args(["-H", &format!("Authorization: Bearer {token}")])
                .arg(format!(
                    "{}/api/v1/namespaces/default/{resource}?watch=1",
                    server.url()
                ))
                .stdout(Stdio::piped())
                .spawn()
                .expect("start curl watch");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    let _ = tx.send(line);
                }
            });
            clients.push((resource, child, rx));
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&server, "windlass_apiserver_client_watches") < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "30 watches never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // One store watch per resource, however many clients watch it (the controllers inside the
    // server hold watches on other resources, so count these two).
    for resource in ["pods", "configmaps"] {
        let line = format!(
            "windlass_apiserver_store_watches{{holder=\"watch_cache\",resource=\"{resource}\"}}"
        );
        assert_eq!(metric(&server, &line), 1, "{resource}");
    }
    assert_eq!(
        metric(
            &server,
            "windlass_apiserver_store_watches{holder=\"client\"}"
        ),
        0
    );

    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&token),
        Some(r#"{"metadata":{"name":"fan-out"},"spec":{"containers":[{"name":"c","image":"windlass.local/busybox:latest"}]}}"#),
        "application/json",
    );
    assert_eq!(code, 201, "{body}");
    for (resource, mut child, rx) in clients {
        if resource == "pods" {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let line = rx
                    .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                    .expect("every pod watcher sees the new pod");
                let event = json(&line);
                if event["type"] == "ADDED" && event["object"]["metadata"]["name"] == "fan-out" {
                    break;
                }
            }
        } else {
            assert!(rx.try_recv().is_err(), "configmap watchers see no pod");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The `kubernetes` client from PyPI, as a user would script it.
const PYTHON_SCRIPT: &str = r#"
import sys, threading, time
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core, apps = client.CoreV1Api(), client.AppsV1Api()

core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
cm = core.create_namespaced_config_map("py", client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="settings", labels={"app": "x"}), data={"k": "v"}))
assert cm.metadata.uid and cm.metadata.resource_version, cm.metadata
assert [c.metadata.name for c in core.list_namespaced_config_map("py", label_selector="app=x").items] == ["settings"]
assert core.list_namespaced_config_map("py", label_selector="app=y").items == []
assert [n.metadata.name for n in core.list_namespace(field_selector="metadata.name=py").items] == ["py"]

patched = core.patch_namespaced_config_map("settings", "py", {"data": {"k": "w"}})
assert patched.data == {"k": "w"}, patched.data
stale = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings", resource_version=cm.metadata.resource_version), data={"k": "stale"})
try:
    core.replace_namespaced_config_map("settings", "py", stale)
    raise SystemExit("stale replace was accepted")
except ApiException as e:
    assert e.status == 409, e

bad = client.V1Pod(metadata=client.V1ObjectMeta(name="bad"), spec=client.V1PodSpec(containers=[client.V1Container(name="c")]))
try:
    core.create_namespaced_pod("py", bad)
    raise SystemExit("invalid pod was accepted")
except ApiException as e:
    assert e.status == 422 and "spec.containers[0].image" in e.body, e

dep = apps.create_namespaced_deployment("py", client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web"),
    spec=client.V1DeploymentSpec(replicas=1, selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="windlass.local/busybox:latest")])))))
assert dep.spec.strategy.type == "RollingUpdate", dep.spec.strategy
scale = apps.patch_namespaced_deployment_scale("web", "py", {"spec": {"replicas": 3}})
assert scale.spec.replicas == 3

def later():
    time.sleep(0.5)
    core.create_namespaced_config_map("py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="live")))
threading.Thread(target=later).start()
seen = []
for event in watch.Watch().stream(core.list_namespaced_config_map, "py", timeout_seconds=20):
    seen.append((event["type"], event["object"].metadata.name))
    if event["object"].metadata.name == "live":
        break
assert ("ADDED", "settings") in seen and ("ADDED", "live") in seen, seen

core.delete_namespaced_config_map("live", "py")
assert [c.metadata.name for c in core.list_namespaced_config_map("py").items] == ["settings"]
print("python client OK")
"#;

fn python_client_works_unmodified(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let python = python_client();
    let out = Command::new(python)
        .arg("-c")
        .arg(PYTHON_SCRIPT)
        .arg(server.kubeconfig())
        .output()
        .expect("run the python client");
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client OK"));
}

fn kubectl_watch_sees_changes_live(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    // The newest kubectl here: `kubectl run` sends its pod as protobuf from 1.31 on.
    let creator = kubectls().pop().expect("a kubectl");
    let run = |name: &str| {
        server.kubectl_ok(
            &creator,
            &[
                "-n",
                "default",
                "run",
                name,
                "--image=windlass.local/busybox:latest",
                "--restart=Never",
            ],
        );
    };
    for (i, k) in kubectls().iter().enumerate() {
        let mut watcher = Command::new(k)
            .args(["get", "pods", "-n", "default", "-w", "-o", "name"])
            .env("KUBECONFIG", server.kubeconfig())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl get pods -w");
        let stdout = watcher.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wait_for = |expected: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) if line.trim() == expected => return,
                    Ok(_) => continue,
                    Err(_) => panic!("kubectl get pods -w never showed {expected}"),
                }
            }
        };
        // A first pod shows the watch is established (it may arrive from the initial list or
        // as a live event); the second one can only arrive live.
        let (marker, live) = (format!("marker-{i}"), format!("live-{i}"));
        run(&marker);
        wait_for(&format!("pod/{marker}"));
        run(&live);
        wait_for(&format!("pod/{live}"));
        server.kubectl_ok(k, &["-n", "default", "label", "pod", &live, "changed=yes"]);
        wait_for(&format!("pod/{live}"));
        server.kubectl_ok(k, &["-n", "default", "delete", "pod", &live, &marker]);
        let _ = watcher.kill();
        let _ = watcher.wait();
    }
}

fn stale_update_is_409_and_invalid_object_is_422_naming_the_field(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let token = server.admin_token();
    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(&token),
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"k":"1"}}"#),
        "application/json",
    );
    assert_eq!(code, 201, "{body}");
    let created = json(&body);
    let stale = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let update = |rv: &str, value: &str| {
        server.curl(
            "PUT",
            "/api/v1/namespaces/default/configmaps/c",
            Some(&token),
            Some(&format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c","resourceVersion":"{rv}"}},"data":{{"k":"{value}"}}}}"#)),
            "application/json",
        )
    };
    let (code, body) = update(&stale, "2");
    assert_eq!(code, 200, "{body}");
    let (code, body) = update(&stale, "3");
    assert_eq!(code, 409, "{body}");
    let status = json(&body);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Conflict");

    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&token),
        Some(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox","ports":[{"containerPort":"http"}]}]}}"#),
        "application/json",
    );
    assert_eq!(code, 422, "{body}");
    let status = json(&body);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.containers[0].ports[0].containerPort"
    );

    for k in kubectls() {
        let bad = Command::new(&k)
            .args(["-n", "default", "create", "-f", "-", "--validate=false"])
            .env("KUBECONFIG", server.kubeconfig())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(
                    br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bad"},"spec":{"containers":[{"name":"c"}]}}"#,
                )?;
                child.wait_with_output()
            })
            .expect("run kubectl create");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success());
        assert!(
            stderr.contains("is invalid") && stderr.contains("spec.containers[0].image"),
            "{stderr}"
        );
    }
}

fn requests_without_a_valid_token_get_401(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    for token in [None, Some("not-the-token")] {
        let (code, body) =
            server.curl("GET", "/api/v1/namespaces", token, None, "application/json");
        assert_eq!(code, 401, "{body}");
        assert_eq!(json(&body)["reason"], "Unauthorized");
    }
    let (code, _) = server.curl("GET", "/healthz", None, None, "application/json");
    assert_eq!(code, 200, "health checks need no token");
    for k in kubectls() {
        let out = server.kubectl(&k, &["--token=wrong", "get", "namespaces"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        // kubectl words a 401 as "Unauthorized" (1.20) or "the server has asked for the client
        // to provide credentials" (newer).
        assert!(
            stderr.contains("Unauthorized") || stderr.contains("provide credentials"),
            "{}: {stderr}",
            k.display()
        );
    }
}

fn kill_9_loses_no_acknowledged_write(backend: Backend) {
    let mut server = TestServer::start(backend).expect("start windlass server");
    let token = server.admin_token();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let (url, ca, stop, acknowledged) = (
            server.url(),
            server.data_dir().join("pki/ca.crt"),
            stop.clone(),
            acknowledged.clone(),
        );
        std::thread::spawn(move || {
            // A bounded stream of creates; each one counts only once the server answered 201.
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("cm-{i:05}");
                let out = Command::new("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "5",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--cacert",
                    ])
                    .arg(&ca)
                    .args([
                        "-H",
                        &format!("Authorization: Bearer {token}"),
                        "-H",
                        "Content-Type: application/json",
                        "--data-binary",
                    ])
                    .arg(format!(
                        r#"{{"metadata":{{"name":"{name}"}},"data":{{"i":"{i}"}}}}"#
                    ))
                    .arg(format!("{url}/api/v1/namespaces/default/configmaps"))
                    .output();
                match out {
                    Ok(o) if String::from_utf8_lossy(&o.stdout) == "201" => {
                        acknowledged.lock().expect("lock").push(name)
                    }
                    _ => {}
                }
            }
        })
    };
    // Kill the server in the middle of the stream, once some writes have been acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().expect("lock").len() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let acked = acknowledged.lock().expect("lock").clone();

    server.restart().expect("restart after kill -9");
    let k = &kubectls()[0];
    let names = server.kubectl_ok(k, &["-n", "default", "get", "configmaps", "-o", "name"]);
    let stored: std::collections::HashSet<&str> = names
        .lines()
        .filter_map(|l| l.strip_prefix("configmap/"))
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|n| !stored.contains(n.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost after kill -9: {lost:?}",
        lost.len(),
        acked.len()
    );
}

fn lists_page_with_limit_and_continue(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let token = server.admin_token();
    for i in 0..7 {
        let (code, body) = server.curl(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(&token),
            Some(&format!(
                r#"{{"metadata":{{"name":"page-{i}","labels":{{"even":"{}"}}}}}}"#,
                i % 2 == 0
            )),
            "application/json",
        );
        assert_eq!(code, 201, "{body}");
    }
    let mut names = Vec::new();
    let mut path =
        "/api/v1/namespaces/default/configmaps?limit=3&labelSelector=even%3Dtrue".to_string();
    let mut pages = 0;
    loop {
        let (code, body) = server.curl("GET", &path, Some(&token), None, "application/json");
        assert_eq!(code, 200, "{body}");
        let list = json(&body);
        pages += 1;
        names.extend(
            list["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string()),
        );
        match list["metadata"]["continue"].as_str() {
            Some(token) if !token.is_empty() => {
                path = format!(
                    "/api/v1/namespaces/default/configmaps?limit=3&labelSelector=even%3Dtrue&continue={token}"
                );
            }
            _ => break,
        }
    }
    assert_eq!(names, ["page-0", "page-2", "page-4", "page-6"]);
    assert_eq!(pages, 2);
    for k in kubectls() {
        let out = server.kubectl_ok(
            &k,
            &[
                "-n",
                "default",
                "get",
                "configmaps",
                "--chunk-size=2",
                "-o",
                "name",
            ],
        );
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("configmap/page-"))
                .count(),
            7,
            "{out}"
        );
    }
}

fn cluster_ips_are_never_handed_out_twice_and_are_released(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let token = server.admin_token();
    let create = |name: &str, ip: &str| {
        server.curl(
            "POST",
            "/api/v1/namespaces/default/services",
            Some(&token),
            Some(&format!(r#"{{"metadata":{{"name":"{name}"}},"spec":{{"type":"NodePort","clusterIP":"{ip}","ports":[{{"port":80}}]}}}}"#)),
            "application/json",
        )
    };
    let (code, body) = create("a", "10.96.7.7");
    assert_eq!(code, 201, "{body}");
    let node_port = json(&body)["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("node port allocated");
    assert!((30000..=32767).contains(&node_port));
    let (code, body) = create("b", "10.96.7.7");
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        json(&body)["details"]["causes"][0]["field"],
        "spec.clusterIP"
    );
    let (code, _) = server.curl(
        "DELETE",
        "/api/v1/namespaces/default/services/a",
        Some(&token),
        None,
        "application/json",
    );
    assert_eq!(code, 200);
    let (code, body) = create("b", "10.96.7.7");
    assert_eq!(code, 201, "released on delete: {body}");
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let (code, body) = create(&format!("auto-{i}"), "");
        assert_eq!(code, 201, "{body}");
        let service = json(&body);
        assert!(
            seen.insert(
                service["spec"]["clusterIP"]
                    .as_str()
                    .expect("ip")
                    .to_string()
            ),
            "unique ClusterIPs"
        );
        assert!(
            seen.insert(service["spec"]["ports"][0]["nodePort"].to_string()),
            "unique node ports"
        );
    }
    // A ClusterIP Service turned into a NodePort gets a free node port then, and keeps it.
    let (code, body) = server.curl(
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&token),
        Some(r#"{"metadata":{"name":"later"},"spec":{"ports":[{"port":80}]}}"#),
        "application/json",
    );
    assert_eq!(code, 201, "{body}");
    assert!(json(&body)["spec"]["ports"][0].get("nodePort").is_none());
    let patch = |doc: &str| {
        server.curl(
            "PATCH",
            "/api/v1/namespaces/default/services/later",
            Some(&token),
            Some(doc),
            "application/merge-patch+json",
        )
    };
    let (code, body) = patch(r#"{"spec":{"type":"NodePort"}}"#);
    assert_eq!(code, 200, "{body}");
    let node_port = json(&body)["spec"]["ports"][0]["nodePort"].to_string();
    assert!(seen.insert(node_port.clone()), "a free node port: {body}");
    let (code, body) = patch(r#"{"metadata":{"labels":{"touched":"yes"}}}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["spec"]["ports"][0]["nodePort"].to_string(),
        node_port
    );
}
