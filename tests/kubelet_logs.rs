//! `kubectl logs` end to end: the API server proxies `pods/log` to the kubelet's HTTPS server,
//! which reads the CRI log files windlass-shim writes.
//!
//! The API server must dial the kubelet, so it runs inside the topology's fabric namespace on
//! 192.0.2.254 (the bridge's address) instead of the host's loopback; the agent in the node
//! namespace (192.0.2.1) reaches it over the fabric, and kubectl runs in the fabric namespace.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use windlass_tests::agent::TestAgent;
use windlass_tests::apiserver::TestServer;
use windlass_tests::oci_image::{self, Image};
use windlass_tests::topology::Topology;
use windlass_tests::wait::eventually;
use windlass_tests::{prefix, prereq};

const PATIENCE: Duration = Duration::from_secs(60);

struct Cluster {
    // Drop order: agent (and its pods), then the server (inside the fabric), then the topology.
    agent: TestAgent,
    server: TestServer,
    _topology: Topology,
    files: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        prereq::require_root();
        let topology = Topology::builder().nodes(1).build().expect("topology");
        let ip = topology.fabric_address().expect("fabric address");
        let server = TestServer::start_in(topology.fabric(), ip).expect("start windlass server");
        // CrashLoopBackOff from 1 s, so the restarting container restarts quickly.
        let agent = TestAgent::start(&server, topology.node(0), 1.0).expect("start agent");
        let files = tempfile::Builder::new()
            .prefix(&format!("{}-logs", prefix::unique()))
            .tempdir()
            .expect("tempdir");
        let busybox = oci_image::require_static_busybox();
        let applets = ["sh", "sleep", "cat", "echo", "true", "false"];
        let archive = files.path().join("busybox.tar");
        Image::from_reference("windlass.local/busybox:latest")
            .expect("reference")
            .entries(oci_image::busybox_rootfs(&busybox, &applets))
            .cmd(&["sh"])
            .write_archive(&archive)
            .expect("write the busybox archive");
        agent.import_image(&archive).expect("import busybox");
        let cluster = Cluster {
            agent,
            server,
            _topology: topology,
            files,
        };
        let node = cluster.agent.node_name().to_string();
        eventually("the node to be Ready", PATIENCE, || {
            let node = cluster.get(&kubectl0(), "node", &node)?;
            let ready = node["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(())
        });
        cluster
    }

    fn get(&self, kubectl: &Path, kind: &str, name: &str) -> Option<Value> {
        let out = self
            .server
            .kubectl(kubectl, &["get", kind, name, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn create(&self, manifest: &str) {
        let file = self.files.path().join(format!("{}.yaml", prefix::unique()));
        std::fs::write(&file, manifest).expect("write manifest");
        self.server
            .kubectl_ok(&kubectl0(), &["create", "-f", &file.display().to_string()]);
    }

    fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(&format!("pod {name}: {what}"), PATIENCE, || {
            let pod = self.get(&kubectl0(), "pod", name)?;
            check(&pod).then_some(pod)
        })
    }

    /// `kubectl logs args...`: stdout, or the failure's stderr as `Err`.
    fn logs(&self, kubectl: &Path, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        let out = self.server.kubectl(kubectl, &all);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }
}

/// Debian's kubectl (1.20), which every client-facing test must pass with.
fn kubectl0() -> PathBuf {
    prereq::kubectls().remove(0)
}

const COUNTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: counter}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: windlass.local/busybox:latest
    command: ["sh", "-c"]
    args:
    - i=1; while [ $i -le 5 ]; do echo "line $i"; i=$((i+1)); done; while true; do echo "tick $i"; i=$((i+1)); sleep 1; done
"#;

const RESTARTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: restarter}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: windlass.local/busybox:latest
    command: ["sh", "-c"]
    args:
    - n=$(cat /state/n 2>/dev/null || echo 0); echo "attempt $n"; echo $((n+1)) > /state/n; sleep 1; exit 1
    volumeMounts: [{name: state, mountPath: /state}]
  volumes:
  - {name: state, emptyDir: {}}
"#;

const TWO: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: two}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: a, image: windlass.local/busybox:latest, command: ["sh", "-c", "echo from-a; exec sleep 3600"]}
  - {name: b, image: windlass.local/busybox:latest, command: ["sh", "-c", "echo from-b; exec sleep 3600"]}
"#;

fn tick(line: &str) -> Option<u64> {
    line.strip_prefix("tick ")?.trim().parse().ok()
}

/// Reads `child`'s stdout lines on a thread; the receiver gets each line.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn check_counter(cluster: &Cluster, kubectl: &Path) {
    let k = kubectl.display().to_string();
    // All lines: the numbered ones first, then the ticks.
    let all = eventually("counter's numbered lines and a tick", PATIENCE, || {
        let out = cluster.logs(kubectl, &["counter"]).ok()?;
        out.contains("tick 7").then_some(out)
    });
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(
        lines[..5],
        ["line 1", "line 2", "line 3", "line 4", "line 5"],
        "{k}: {all}"
    );
    assert_eq!(lines[5], "tick 6", "{k}: {all}");

    // --tail=2: the last two lines, consecutive ticks.
    let tail = cluster
        .logs(kubectl, &["counter", "--tail=2"])
        .expect("tail");
    let ticks: Vec<u64> = tail.lines().filter_map(tick).collect();
    assert_eq!(tail.lines().count(), 2, "{k}: {tail:?}");
    assert_eq!(ticks.len(), 2, "{k}: {tail:?}");
    assert_eq!(ticks[1], ticks[0] + 1, "{k}: {tail:?}");
    assert!(ticks[0] >= 6, "{k}: {tail:?}");

    // --timestamps: an RFC 3339 time, a space, the line.
    let stamped = cluster
        .logs(kubectl, &["counter", "--timestamps", "--tail=3"])
        .expect("timestamps");
    let now = jiff::Timestamp::now();
    for line in stamped.lines() {
        let (time, text) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("{k}: no timestamp in {line:?}"));
        let time: jiff::Timestamp = time
            .parse()
            .unwrap_or_else(|e| panic!("{k}: {time:?} is not RFC 3339: {e}"));
        let age = now.duration_since(time);
        assert!(
            age < jiff::SignedDuration::from_secs(120) && age > jiff::SignedDuration::from_secs(-5),
            "{k}: implausible log time {time} (now {now})"
        );
        assert!(
            tick(text).is_some() || text.starts_with("line "),
            "{k}: {line:?}"
        );
    }

    // -f: the last line, then new ones as the container writes them, until we stop kubectl.
    let command = cluster
        .server
        .kubectl_command(kubectl, &["logs", "-f", "--tail=1", "counter"]);
    let mut child = cluster.server.spawn_in_netns(command);
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 4 && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(line);
        }
    }
    let still_running = child.try_wait().ok().flatten().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "{k}: kubectl logs -f ended early: {seen:?}");
    let ticks: Vec<u64> = seen.iter().filter_map(|l| tick(l)).collect();
    assert_eq!(ticks.len(), 4, "{k}: followed {seen:?}");
    for pair in ticks.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "{k}: followed {seen:?}");
    }
}

#[test]
fn kubectl_logs_tail_timestamps_follow_previous_and_container_choice() {
    let cluster = Cluster::start();
    cluster.create(COUNTER);
    cluster.create(RESTARTER);
    cluster.create(TWO);
    cluster.wait_pod("counter", "Running", |p| p["status"]["phase"] == "Running");

    let kubectls = prereq::kubectls();
    for kubectl in &kubectls {
        check_counter(&cluster, kubectl);
    }

    // --previous: the attempt before the current one.
    cluster.wait_pod("restarter", "restarted twice", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .is_some_and(|n| n >= 2)
    });
    for kubectl in &kubectls {
        let k = kubectl.display().to_string();
        eventually(
            &format!("{k}: --previous shows the attempt before"),
            PATIENCE,
            || {
                let before = cluster.get(kubectl, "pod", "restarter")?;
                let restarts = before["status"]["containerStatuses"][0]["restartCount"].as_i64()?;
                let previous = cluster.logs(kubectl, &["restarter", "--previous"]).ok()?;
                let current = cluster.logs(kubectl, &["restarter"]).ok()?;
                let after = cluster.get(kubectl, "pod", "restarter")?;
                // Only a read between two restarts is conclusive.
                if after["status"]["containerStatuses"][0]["restartCount"].as_i64()? != restarts {
                    return None;
                }
                assert_eq!(previous, format!("attempt {}\n", restarts - 1), "{k}");
                assert_eq!(current, format!("attempt {restarts}\n"), "{k}");
                Some(())
            },
        );
    }

    // -f ends by itself when the followed attempt exits (here after about a second).
    let command = cluster
        .server
        .kubectl_command(&kubectls[0], &["logs", "-f", "restarter"]);
    let mut child = cluster.server.spawn_in_netns(command);
    let rx = lines_of(&mut child);
    let exited = eventually("kubectl logs -f to end with the attempt", PATIENCE, || {
        child.try_wait().ok().flatten()
    });
    assert!(exited.success(), "kubectl logs -f restarter: {exited}");
    // stdout is closed now, so the reader thread ends and the channel drains.
    let followed: Vec<String> = rx.iter().collect();
    assert!(
        followed.len() == 1 && followed[0].starts_with("attempt "),
        "{followed:?}"
    );

    // Two containers and no -c: kube-apiserver's 400, through the raw API for every kubectl
    // (newer ones pick a default container themselves), and through `kubectl logs` for 1.20.
    cluster.wait_pod("two", "Running", |p| p["status"]["phase"] == "Running");
    let message = "a container name must be specified for pod two, choose one of: [a b]";
    for kubectl in &kubectls {
        let k = kubectl.display().to_string();
        let out = cluster.server.kubectl(
            kubectl,
            &["get", "--raw", "/api/v1/namespaces/default/pods/two/log"],
        );
        assert!(!out.status.success(), "{k}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{k}: {stderr}");
        let b = eventually(&format!("{k}: logs -c b"), PATIENCE, || {
            let out = cluster.logs(kubectl, &["two", "-c", "b"]).ok()?;
            (!out.is_empty()).then_some(out)
        });
        assert_eq!(b, "from-b\n", "{k}");
    }
    let err = cluster
        .logs(&kubectls[0], &["two"])
        .expect_err("kubectl 1.20 sends no container");
    assert!(err.contains(message), "{err}");
    let missing = cluster
        .logs(&kubectls[0], &["nosuchpod"])
        .expect_err("unknown pod");
    assert!(
        missing.contains("pods \"nosuchpod\" not found"),
        "{missing}"
    );
}

/// The kubelet's own server: client certificates signed by the cluster CA only.
#[test]
fn kubelet_server_requires_a_cluster_client_certificate() {
    let cluster = Cluster::start();
    cluster.create(COUNTER);
    cluster.wait_pod("counter", "Running", |p| p["status"]["phase"] == "Running");
    prereq::require_tool("curl");
    let pki = cluster.server.data_dir().join("pki");
    let url = "https://192.0.2.1:10250";
    let curl = |args: &[&str], path: &str| {
        let mut command = std::process::Command::new("curl");
        command
            .args(["-sS", "-k", "--max-time", "10"])
            .args(args)
            .arg(format!("{url}{path}"));
        let netns = cluster.server.netns().expect("server in the fabric");
        let ns = windlass_tests::NetNs::open(netns).expect("fabric");
        ns.exec(&mut command).expect("run curl")
    };
    let anonymous = curl(&[], "/healthz");
    assert!(
        !anonymous.status.success(),
        "no client certificate, no answer"
    );
    let cert = pki
        .join("apiserver-kubelet-client.crt")
        .display()
        .to_string();
    let key = pki
        .join("apiserver-kubelet-client.key")
        .display()
        .to_string();
    let with_cert = ["--cert", cert.as_str(), "--key", key.as_str()];
    let health = curl(&with_cert, "/healthz");
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok");
    let pods = eventually("the kubelet to list counter", PATIENCE, || {
        let out = curl(&with_cert, "/pods");
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        let items = list["items"].as_array()?.clone();
        items
            .iter()
            .any(|p| p["metadata"]["name"] == "counter")
            .then_some(list)
    });
    assert_eq!(pods["kind"], "PodList");
    let logs = eventually("logs through the kubelet", PATIENCE, || {
        let out = curl(
            &with_cert,
            "/containerLogs/default/counter/main?tailLines=1",
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.starts_with("tick ").then_some(text)
    });
    assert_eq!(logs.lines().count(), 1, "{logs}");
    // The Node publishes the port.
    let node = cluster
        .get(&kubectl0(), "node", cluster.agent.node_name())
        .expect("node");
    assert_eq!(
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        10250
    );
}
