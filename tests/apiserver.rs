//! `windlass server` against real clients (Debian's kubectl 1.20, any other kubectl on PATH, and
//! curl for exact status codes), on both stores. Each check runs once per store.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::prereq::kubectls;

macro_rules! per_store {
    ($($check:ident),* $(,)?) => {
        mod on_sqlite { $( #[test] fn $check() { super::$check(super::Backend::Sqlite); } )* }
        mod on_etcd { $( #[test] fn $check() { super::$check(super::Backend::Etcd); } )* }
    };
}

per_store!(
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

/// Debian's kubectl 1.20, which sends JSON bodies. kubectl >= 1.31 sends the bodies of creates
/// and replaces of built-in types as protobuf, which this server does not decode yet; every other
/// verb runs through every kubectl under test.
fn json_kubectl() -> std::path::PathBuf {
    kubectls().remove(0)
}

fn kubectl_creates_lists_labels_scales_and_deletes(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let creator = json_kubectl();
    for (i, k) in kubectls().iter().enumerate() {
        let ns = format!("team-{i}");
        server.kubectl_ok(&creator, &["create", "namespace", &ns]);
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
            &creator,
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
            &creator,
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
            &creator,
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
        let pods = server.kubectl_ok(k, &["get", "pods", "-A"]);
        assert_eq!(pods.trim(), "", "no pods anywhere");
    }
}

fn kubectl_watch_sees_changes_live(backend: Backend) {
    let server = TestServer::start(backend).expect("start windlass server");
    let creator = json_kubectl();
    for k in kubectls() {
        let mut watcher = Command::new(&k)
            .args(["get", "configmaps", "-n", "default", "-w", "-o", "name"])
            .env("KUBECONFIG", server.kubeconfig())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl get -w");
        // The watch must be established before the changes: the first line of `-w` output
        // follows the initial list, so create a marker and wait for it to appear.
        server.kubectl_ok(
            &creator,
            &["-n", "default", "create", "configmap", "marker"],
        );
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
                    Err(_) => panic!("kubectl get -w never showed {expected}"),
                }
            }
        };
        wait_for("configmap/marker");
        server.kubectl_ok(&creator, &["-n", "default", "create", "configmap", "live"]);
        wait_for("configmap/live");
        server.kubectl_ok(
            &k,
            &["-n", "default", "delete", "configmap", "live", "marker"],
        );
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
}
