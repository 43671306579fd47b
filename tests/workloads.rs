//! Workloads inside `windlass server`: the scheduler, the ReplicaSet and Deployment controllers
//! and the garbage collector, with fake nodes and a fake kubelet, observed through the API.

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

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: roll, namespace: default}
spec:
  replicas: 5
  selector: {matchLabels: {app: roll}}
  template:
    metadata: {labels: {app: roll}}
    spec:
      containers:
      - name: web
        image: windlass.local/busybox:v1
        resources: {requests: {cpu: 100m, memory: 64Mi}}
"#;

/// Whether a pod (as JSON) is live (not terminating) and Ready.
fn live_and_ready(pod: &Value) -> (bool, bool) {
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
    (pod.pointer("/metadata/deletionTimestamp").is_none(), ready)
}

/// Watches `app`'s pods from a consistent list and checks, after every event, that live pods
/// stay within replicas + surge and ready ones at or above replicas - unavailable.
fn watch_bounds(
    server: &TestServer,
    app: &str,
    most: usize,
    least_ready: usize,
) -> (
    std::process::Child,
    std::thread::JoinHandle<Result<usize, String>>,
) {
    let token = server.admin_token();
    let path = format!("/api/v1/namespaces/default/pods?labelSelector=app%3D{app}");
    let (_, body) = server.curl("GET", &path, Some(&token), None, "");
    let list = json(&body);
    let mut pods: HashMap<String, (bool, bool)> = HashMap::new();
    for p in list["items"].as_array().expect("items") {
        pods.insert(
            p["metadata"]["name"].as_str().unwrap_or("").into(),
            live_and_ready(p),
        );
    }
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut child = std::process::Command::new("curl")
        .args(["-sSN", "--max-time", "60", "--cacert"])
        .arg(server.data_dir().join("pki/ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!(
            "{}{path}&watch=1&resourceVersion={rv}",
            server.url()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl watch");
    let stdout = child.stdout.take().expect("stdout");
    let checker = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut events = 0;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let event: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            let p = &event["object"];
            let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
            if event["type"] == "DELETED" {
                pods.remove(&name);
            } else {
                pods.insert(name, live_and_ready(p));
            }
            events += 1;
            let live = pods.values().filter(|(live, _)| *live).count();
            let ready = pods
                .values()
                .filter(|(live, ready)| *live && *ready)
                .count();
            if live > most || ready < least_ready {
                return Err(format!(
                    "after event {events}: {live} live pods (at most {most}), {ready} ready (at least {least_ready})"
                ));
            }
        }
        Ok(events)
    });
    (child, checker)
}

#[test]
fn deployment_rolls_out_within_its_bounds_and_rolls_back() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    let nodes = ["n1", "n2", "n3"];
    for n in nodes {
        register_node(&server.kubeconfig(), n, "4", "8Gi").expect("register node");
    }
    let _kubelet = FakeKubelet::start(&server.kubeconfig(), &nodes).expect("fake kubelet");
    let k = &kubectls()[0];
    let manifest = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(manifest.path(), DEPLOYMENT).expect("write");
    server.kubectl_ok(k, &["apply", "-f", manifest.path().to_str().expect("path")]);
    server.kubectl_ok(
        k,
        &["rollout", "status", "deployment/roll", "--timeout=60s"],
    );
    assert_eq!(pods(&server, "roll").len(), 5);
    let per_node = |server: &TestServer| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (_, node) in pods(server, "roll") {
            *counts.entry(node.unwrap_or_default()).or_default() += 1;
        }
        counts
    };
    assert_eq!(
        per_node(&server).len(),
        3,
        "spread over the 3 nodes: {:?}",
        per_node(&server)
    );
    for replicas in [10, 2, 5] {
        server.kubectl_ok(
            k,
            &[
                "scale",
                "deployment",
                "roll",
                &format!("--replicas={replicas}"),
            ],
        );
        server.kubectl_ok(
            k,
            &["rollout", "status", "deployment/roll", "--timeout=60s"],
        );
        eventually(&format!("{replicas} bound pods"), PATIENCE, || {
            let p = pods(&server, "roll");
            (p.len() == replicas && p.iter().all(|(_, n)| n.is_some())).then_some(())
        });
    }

    // 25% of 5: surge rounds up to 2, unavailable down to 1.
    let (mut watcher, checker) = watch_bounds(&server, "roll", 5 + 2, 5 - 1);
    server.kubectl_ok(
        k,
        &[
            "set",
            "image",
            "deployment/roll",
            "web=windlass.local/busybox:v2",
        ],
    );
    server.kubectl_ok(
        k,
        &["rollout", "status", "deployment/roll", "--timeout=60s"],
    );
    let images = |server: &TestServer| {
        let (_, body) = server.curl(
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Droll",
            Some(&server.admin_token()),
            None,
            "",
        );
        let mut images: Vec<String> = json(&body)["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
            .map(|p| {
                p.pointer("/spec/containers/0/image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        images.sort();
        images.dedup();
        images
    };
    eventually("every pod on v2", PATIENCE, || {
        (images(&server) == ["windlass.local/busybox:v2"]).then_some(())
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    let events = checker
        .join()
        .expect("checker")
        .expect("bounds held at every observed moment");
    assert!(events >= 10, "the rollout was observed ({events} events)");

    let history = server.kubectl_ok(k, &["rollout", "history", "deployment/roll"]);
    assert!(
        history.lines().any(|l| l.trim_start().starts_with('1'))
            && history.lines().any(|l| l.trim_start().starts_with('2')),
        "{history}"
    );
    server.kubectl_ok(k, &["rollout", "undo", "deployment/roll"]);
    server.kubectl_ok(
        k,
        &["rollout", "status", "deployment/roll", "--timeout=60s"],
    );
    let image = server.kubectl_ok(
        k,
        &[
            "get",
            "deployment",
            "roll",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    );
    assert_eq!(image, "windlass.local/busybox:v1");
    eventually("every pod back on v1", PATIENCE, || {
        (images(&server) == ["windlass.local/busybox:v1"]).then_some(())
    });
    let columns = server.kubectl_ok(k, &["get", "deployment", "roll"]);
    assert!(
        columns
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()[1..4] == ["5/5", "5", "5"]),
        "{columns}"
    );
}

/// The endpoints of `svc`'s slices as (pod, ready, serving, terminating), sorted.
fn slice_endpoints(server: &TestServer, svc: &str) -> Vec<(String, bool, bool, bool)> {
    let path = format!(
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{svc}"
    );
    let (_, body) = server.curl("GET", &path, Some(&server.admin_token()), None, "");
    let mut out: Vec<(String, bool, bool, bool)> = json(&body)["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let c = &e["conditions"];
            (
                e["targetRef"]["name"].as_str().unwrap_or("").to_string(),
                c["ready"] == true,
                c["serving"] == true,
                c["terminating"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_services_endpointslice_follows_pod_readiness_and_termination() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    register_node(&server.kubeconfig(), "n1", "8", "16Gi").expect("register node");
    let kubelet = FakeKubelet::start(&server.kubeconfig(), &["n1"]).expect("fake kubelet");
    replicaset_with_pods(&server, "ep", 2);
    let token = server.admin_token();
    let (code, body) = server.curl("POST", "/api/v1/namespaces/default/services", Some(&token),
        Some(r#"{"metadata":{"name":"ep"},"spec":{"selector":{"app":"ep"},"ports":[{"name":"http","port":80,"targetPort":8080}]}}"#), "application/json");
    assert_eq!(code, 201, "{body}");
    let names: Vec<String> = {
        let mut n: Vec<String> = pods(&server, "ep").into_iter().map(|(n, _)| n).collect();
        n.sort();
        n
    };
    let all_ready: Vec<(String, bool, bool, bool)> = names
        .iter()
        .map(|n| (n.clone(), true, true, false))
        .collect();
    eventually("both pods ready in the slice", PATIENCE, || {
        (slice_endpoints(&server, "ep") == all_ready).then_some(())
    });
    let (_, body) = server.curl("GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dep", Some(&token), None, "");
    let slice = &json(&body)["items"][0];
    assert_eq!(
        slice["ports"][0]["port"], 8080,
        "the target port, named as the service port: {slice}"
    );
    assert_eq!(slice["ports"][0]["name"], "http");
    assert_eq!(slice["addressType"], "IPv4");
    assert!(
        slice["endpoints"][0]["addresses"][0]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.244.")),
        "{slice}"
    );

    // Not ready: still listed, ready false.
    let not_ready = r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#;
    let (code, body) = server.curl(
        "PATCH",
        &format!("/api/v1/namespaces/default/pods/{}/status", names[0]),
        Some(&token),
        Some(not_ready),
        "application/merge-patch+json",
    );
    assert_eq!(code, 200, "{body}");
    eventually("the first pod not ready", PATIENCE, || {
        (slice_endpoints(&server, "ep")
            == [
                (names[0].clone(), false, false, false),
                (names[1].clone(), true, true, false),
            ])
        .then_some(())
    });

    // Terminating: serving while it shuts down, not ready, marked terminating; then gone.
    kubelet.hold_terminations(true);
    let (code, _) = server.curl(
        "DELETE",
        &format!("/api/v1/namespaces/default/pods/{}", names[1]),
        Some(&token),
        None,
        "",
    );
    assert_eq!(code, 200);
    eventually("the second pod terminating", PATIENCE, || {
        slice_endpoints(&server, "ep")
            .contains(&(names[1].clone(), false, true, true))
            .then_some(())
    });
    let (_, body) = server.curl(
        "GET",
        "/api/v1/namespaces/default/endpoints/ep",
        Some(&token),
        None,
        "",
    );
    let endpoints = json(&body);
    let ready_pods: Vec<&str> = endpoints["subsets"][0]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["targetRef"]["name"].as_str())
        .collect();
    assert!(
        !ready_pods.contains(&names[1].as_str()),
        "a terminating pod is not a ready address in Endpoints: {body}"
    );
    kubelet.hold_terminations(false);
    eventually("the terminated pod out of the slice", PATIENCE, || {
        (!slice_endpoints(&server, "ep")
            .iter()
            .any(|(n, ..)| *n == names[1]))
        .then_some(())
    });
}

const DAEMONSET: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: default}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - name: agent
        image: windlass.local/busybox:latest
"#;

fn node_of(server: &TestServer, app: &str) -> Vec<String> {
    let mut nodes: Vec<String> = pods(server, app)
        .into_iter()
        .filter_map(|(_, n)| n)
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn an_unreachable_node_is_tainted_and_drained_and_daemonsets_cover_new_nodes() {
    let server = TestServer::start_with(
        Backend::Sqlite,
        &[
            "--node-monitor-grace-seconds",
            "2",
            "--default-toleration-seconds",
            "2",
        ],
    )
    .expect("start windlass server");
    for n in ["n1", "n2", "n3"] {
        register_node(&server.kubeconfig(), n, "4", "8Gi").expect("register node");
    }
    let kubelet =
        FakeKubelet::start(&server.kubeconfig(), &["n1", "n2", "n3"]).expect("fake kubelet");
    let k = &kubectls()[0];
    let manifest = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(manifest.path(), DAEMONSET).expect("write");
    server.kubectl_ok(k, &["apply", "-f", manifest.path().to_str().expect("path")]);
    eventually("a daemon pod on each node", PATIENCE, || {
        (node_of(&server, "agent") == ["n1", "n2", "n3"]).then_some(())
    });
    replicaset_with_pods(&server, "work", 6);
    eventually("work spread over the nodes", PATIENCE, || {
        node_of(&server, "work")
            .contains(&"n3".to_string())
            .then_some(())
    });

    // n3 stops renewing its lease.
    kubelet.abandon("n3");
    let node = eventually("n3 marked unreachable", PATIENCE, || {
        let (_, body) = server.curl(
            "GET",
            "/api/v1/nodes/n3",
            Some(&server.admin_token()),
            None,
            "",
        );
        let node = json(&body);
        let tainted = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_some_and(|t| {
                t.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                })
            });
        tainted.then_some(node)
    });
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["status"], "Unknown", "{ready}");
    let columns = server.kubectl_ok(k, &["get", "node", "n3", "--no-headers"]);
    assert!(columns.contains("NotReady"), "{columns}");

    // After the toleration, n3's workload pods are evicted and replaced elsewhere; the daemon pod,
    // which tolerates unreachable nodes, stays.
    eventually("work moved off n3", PATIENCE, || {
        let nodes = node_of(&server, "work");
        (nodes.len() == 6 && !nodes.contains(&"n3".to_string())).then_some(())
    });
    assert_eq!(node_of(&server, "agent"), ["n1", "n2", "n3"]);

    // A new node gets a daemon pod.
    register_node(&server.kubeconfig(), "n4", "4", "8Gi").expect("register node");
    kubelet.serve("n4");
    eventually("a daemon pod on n4", PATIENCE, || {
        node_of(&server, "agent")
            .contains(&"n4".to_string())
            .then_some(())
    });
    let status = server.kubectl_ok(
        k,
        &[
            "get",
            "daemonset",
            "agent",
            "-o",
            "jsonpath={.status.desiredNumberScheduled}",
        ],
    );
    assert_eq!(status, "4");
}

#[test]
fn deleting_a_deployment_takes_its_replicasets_and_pods_unless_orphaned() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    register_node(&server.kubeconfig(), "n1", "8", "16Gi").expect("register node");
    let _kubelet = FakeKubelet::start(&server.kubeconfig(), &["n1"]).expect("fake kubelet");
    let k = &kubectls()[0];
    let replicasets = |server: &TestServer, app: &str| {
        let (_, body) = server.curl(
            "GET",
            &format!("/apis/apps/v1/namespaces/default/replicasets?labelSelector=app%3D{app}"),
            Some(&server.admin_token()),
            None,
            "",
        );
        json(&body)["items"].as_array().map(Vec::len).unwrap_or(0)
    };
    for (app, cascade) in [("gone", None), ("kept", Some("--cascade=orphan"))] {
        let manifest = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(
            manifest.path(),
            DEPLOYMENT
                .replace("roll", app)
                .replace("replicas: 5", "replicas: 3"),
        )
        .expect("write");
        server.kubectl_ok(k, &["apply", "-f", manifest.path().to_str().expect("path")]);
        server.kubectl_ok(
            k,
            &[
                "rollout",
                "status",
                &format!("deployment/{app}"),
                "--timeout=60s",
            ],
        );
        assert_eq!(replicasets(&server, app), 1);
        let mut args = vec!["delete", "deployment", app];
        args.extend(cascade);
        server.kubectl_ok(k, &args);
        eventually(&format!("deployment {app} gone"), PATIENCE, || {
            (server
                .curl(
                    "GET",
                    &format!("/apis/apps/v1/namespaces/default/deployments/{app}"),
                    Some(&server.admin_token()),
                    None,
                    "",
                )
                .0
                == 404)
                .then_some(())
        });
    }
    eventually("gone's ReplicaSet and pods collected", PATIENCE, || {
        (replicasets(&server, "gone") == 0 && pods(&server, "gone").is_empty()).then_some(())
    });
    // Orphaned: the ReplicaSet and its pods stay, and the ReplicaSet keeps them at 3.
    assert_eq!(replicasets(&server, "kept"), 1);
    assert_eq!(pods(&server, "kept").len(), 3);
}
