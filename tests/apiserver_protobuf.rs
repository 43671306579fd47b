//! kubectl's typed creates against `windlass server`: kubectl >= 1.31 sends their bodies as
//! `application/vnd.kubernetes.protobuf`, which the server decodes to JSON; kubectl 1.20 sends
//! JSON. Every kubectl under test creates the same objects, each in its own namespace, and the
//! stored objects are read back as JSON and checked field by field.

use std::path::Path;

use serde_json::Value;
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::prereq::kubectls;

const IMAGE: &str = "windlass.local/busybox:latest";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn get(server: &TestServer, kubectl: &Path, ns: &str, what: &[&str]) -> Value {
    let mut args = vec!["-n", ns, "get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    json(&server.kubectl_ok(kubectl, &args))
}

fn version(server: &TestServer, kubectl: &Path) -> String {
    let out = server.kubectl(kubectl, &["version", "--client", "-o", "json"]);
    let v = json(&String::from_utf8_lossy(&out.stdout));
    v["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

#[test]
fn kubectl_typed_creates_round_trip_through_protobuf() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    // Whether the server serves batch/v1 (Jobs); when it does not, `kubectl create job` cannot
    // run whatever the body encoding, and that step is reported as skipped.
    let serves_jobs = server
        .kubectl(&kubectls()[0], &["get", "--raw", "/apis/batch/v1"])
        .status
        .success();
    for (i, k) in kubectls().iter().enumerate() {
        let ns = format!("pb-{i}");
        let version = version(&server, k);
        eprintln!("kubectl {} ({version}) in namespace {ns}", k.display());
        server.kubectl_ok(k, &["create", "namespace", &ns]);
        let namespace = json(&server.kubectl_ok(k, &["get", "namespace", &ns, "-o", "json"]));
        assert_eq!(namespace["metadata"]["name"], ns.as_str(), "{namespace}");

        let n = ["-n", ns.as_str()];
        let run = |args: &[&str]| server.kubectl_ok(k, &[&n[..], args].concat());

        // At -v=8 kubectl logs the request headers: proves which encoding the body used.
        let create = server.kubectl(
            k,
            &[
                "-n",
                &ns,
                "create",
                "deployment",
                "web",
                &format!("--image={IMAGE}"),
                "--replicas=3",
                "-v=8",
                "--",
                "httpd",
                "-f",
                "-p",
                "8080",
            ],
        );
        let log = String::from_utf8_lossy(&create.stderr);
        assert!(create.status.success(), "create deployment failed: {log}");
        let minor: u32 = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if minor >= 31 {
            assert!(
                log.contains("Content-Type: application/vnd.kubernetes.protobuf"),
                "kubectl {version} did not send protobuf: {log}"
            );
        }
        let deploy = get(&server, k, &ns, &["deployment", "web"]);
        assert_eq!(deploy["spec"]["replicas"], 3, "{deploy}");
        assert_eq!(
            deploy["spec"]["selector"]["matchLabels"]["app"], "web",
            "{deploy}"
        );
        let template = &deploy["spec"]["template"];
        assert_eq!(template["metadata"]["labels"]["app"], "web", "{deploy}");
        let container = &template["spec"]["containers"][0];
        assert_eq!(container["image"], IMAGE, "{deploy}");
        assert_eq!(
            container["command"],
            serde_json::json!(["httpd", "-f", "-p", "8080"]),
            "{deploy}"
        );

        run(&[
            "expose",
            "deployment",
            "web",
            "--port",
            "80",
            "--target-port",
            "8080",
        ]);
        let svc = get(&server, k, &ns, &["service", "web"]);
        let port = &svc["spec"]["ports"][0];
        assert_eq!(port["port"], 80, "{svc}");
        assert_eq!(port["targetPort"], 8080, "{svc}");
        assert_eq!(port["protocol"], "TCP", "{svc}");
        assert_eq!(svc["spec"]["selector"]["app"], "web", "{svc}");
        assert!(
            svc["spec"]["clusterIP"]
                .as_str()
                .is_some_and(|ip| !ip.is_empty()),
            "{svc}"
        );

        run(&["create", "configmap", "c", "--from-literal=a=b"]);
        let cm = get(&server, k, &ns, &["configmap", "c"]);
        assert_eq!(cm["data"]["a"], "b", "{cm}");

        run(&["create", "secret", "generic", "s", "--from-literal=p=q"]);
        let secret = get(&server, k, &ns, &["secret", "s"]);
        assert_eq!(secret["data"]["p"], "cQ==", "{secret}");
        assert_eq!(secret["type"], "Opaque", "{secret}");

        run(&[
            "run",
            "client",
            &format!("--image={IMAGE}"),
            "--restart=Never",
            "--",
            "wget",
            "-qO-",
            "http://web",
        ]);
        let pod = get(&server, k, &ns, &["pod", "client"]);
        assert_eq!(pod["metadata"]["labels"]["run"], "client", "{pod}");
        assert_eq!(pod["spec"]["restartPolicy"], "Never", "{pod}");
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["name"], "client", "{pod}");
        assert_eq!(container["image"], IMAGE, "{pod}");
        assert_eq!(
            container["args"],
            serde_json::json!(["wget", "-qO-", "http://web"]),
            "{pod}"
        );

        let extra = format!("{ns}-n2");
        server.kubectl_ok(k, &["create", "namespace", &extra]);
        let created = json(&server.kubectl_ok(k, &["get", "namespace", &extra, "-o", "json"]));
        assert_eq!(created["metadata"]["name"], extra.as_str(), "{created}");

        if serves_jobs {
            run(&[
                "create",
                "job",
                "j",
                &format!("--image={IMAGE}"),
                "--",
                "true",
            ]);
            let job = get(&server, k, &ns, &["job", "j"]);
            let container = &job["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(container["command"], serde_json::json!(["true"]), "{job}");
            assert_eq!(
                job["spec"]["template"]["spec"]["restartPolicy"], "Never",
                "{job}"
            );
        } else {
            eprintln!("skipped `kubectl create job`: the server does not serve batch/v1");
        }
    }
}

/// A protobuf body of a kind the decoder has no schema for is refused with 415 naming the kind.
#[test]
fn protobuf_of_an_unknown_kind_is_415_naming_it() {
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    // k8s\0, then runtime.Unknown { typeMeta: { apiVersion, kind }, raw: {} }.
    let (api_version, kind) = (b"example.com/v1".as_slice(), b"Widget".as_slice());
    let type_meta = [
        &[0x0a, api_version.len() as u8][..],
        api_version,
        &[0x12, kind.len() as u8],
        kind,
    ]
    .concat();
    let body = [
        &b"k8s\0"[..],
        &[0x0a, type_meta.len() as u8],
        &type_meta,
        &[0x12, 0],
    ]
    .concat();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &body).expect("write body");
    let (code, text) = server.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(&server.admin_token()),
        Some(&format!("@{}", file.path().display())),
        "application/vnd.kubernetes.protobuf",
    );
    assert_eq!(code, 415, "{text}");
    assert!(text.contains("Widget"), "{text}");
}
