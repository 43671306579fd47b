//! The eBPF service proxy end to end (issue 7): `windlass server` plus a `windlass agent` in a
//! node namespace (its own cgroup v2 subtree and BPF pin directory), real pods, and clients that
//! connect the way applications do.
//!
//! Backends are busybox pods that answer every TCP connection on 8080 with their pod name and then
//! echo what they receive (`nc -ll -e`); busybox has no UDP server, so a second container from
//! the harness's `wl-probe` image answers UDP on 5353 with `<pod name> <query>`. Clients are
//! `wl-probe` (see `tests/bin/wl_probe.rs`), run "from the node" (in the node's network
//! namespace and inside the agent's cgroup, where the socket hooks apply), from another node
//! (outside any agent cgroup), or in a pod. Each test checks what a user would: which backend
//! answered, the address the application sees as its peer, how fast a refusal comes, whether an
//! established connection survives, and what `windlass proxy dump` shows next to the API.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use windlass_tests::agent::TestAgent;
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::proxy::{self, PROBE_IMAGE, PROBE_IN_IMAGE};
use windlass_tests::topology::{Node, Topology};
use windlass_tests::wait::eventually;
use windlass_tests::{prefix, prereq};

const PATIENCE: Duration = Duration::from_secs(60);
/// The TCP port every backend serves on, and the Services' port in front of it.
const TCP_TARGET: u16 = 8080;
/// The UDP port the backends' `wl-probe udp-serve` answers on.
const UDP_TARGET: u16 = 5353;
/// The agent's default `--metrics-bind-address` port (on 127.0.0.1 in the node namespace).
const METRICS_PORT: u16 = 10249;

struct Cluster {
    // Drop order: the agent (its pods, its cgroups with the node clients, its pins), then the
    // topology, then the server.
    agent: TestAgent,
    topology: Topology,
    server: TestServer,
    kubectl: PathBuf,
    files: tempfile::TempDir,
}

impl Cluster {
    /// A topology of `nodes` nodes with an agent on node 0 only, the test images imported there,
    /// and the node Ready.
    fn start(nodes: usize) -> Cluster {
        prereq::require_root();
        prereq::require_tool("ip");
        // Missing binaries and images fail here, naming what builds them.
        proxy::wl_probe_bin();
        let busybox = proxy::test_image("busybox");
        let iperf3 = proxy::test_image("iperf3");
        let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
        let topology = Topology::builder().nodes(nodes).build().expect("topology");
        let agent = TestAgent::start(&server, topology.node(0), 1.0).expect("start agent");
        let files = tempfile::Builder::new()
            .prefix(&format!("{}-proxy", prefix::unique()))
            .tempdir()
            .expect("tempdir");
        let probe_archive = files.path().join("wl-probe.tar");
        proxy::probe_image(&probe_archive).expect("write the wl-probe image");
        for archive in [&busybox, &iperf3, &probe_archive] {
            agent
                .import_image(archive)
                .unwrap_or_else(|e| panic!("import {}: {e}", archive.display()));
        }
        let cluster = Cluster {
            agent,
            topology,
            server,
            kubectl: prereq::kubectls().remove(0),
            files,
        };
        let node = cluster.agent.node_name().to_string();
        eventually("the node to be Ready", PATIENCE, || {
            let node = cluster.get("node", &node)?;
            let ready = node["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(())
        });
        cluster
    }

    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let out = self
            .server
            .kubectl(&self.kubectl, &["get", kind, name, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn create(&self, manifest: &str) {
        let file = self.files.path().join(format!("{}.yaml", prefix::unique()));
        std::fs::write(&file, manifest).expect("write manifest");
        self.server.kubectl_ok(
            &self.kubectl,
            &["create", "-f", &file.display().to_string()],
        );
    }

    fn delete_pods(&self, names: &[&str]) {
        let mut args = vec!["delete", "pod", "--wait=false"];
        args.extend_from_slice(names);
        self.server.kubectl_ok(&self.kubectl, &args);
        for name in names {
            eventually(&format!("pod {name} to be gone"), PATIENCE, || {
                self.get("pod", name).is_none().then_some(())
            });
        }
    }

    fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(&format!("pod {name}: {what}"), PATIENCE, || {
            let pod = self.get("pod", name)?;
            check(&pod).then_some(pod)
        })
    }

    /// The Service's ClusterIP, once allocated.
    fn cluster_ip(&self, service: &str) -> Ipv4Addr {
        eventually(
            &format!("service {service} to get a ClusterIP"),
            PATIENCE,
            || {
                self.get("service", service)?["spec"]["clusterIP"]
                    .as_str()?
                    .parse()
                    .ok()
            },
        )
    }

    /// The nodePort allocated to the Service's port `port_name`.
    fn node_port(&self, service: &str, port_name: &str) -> u16 {
        eventually(
            &format!("service {service} to get a nodePort"),
            PATIENCE,
            || {
                let service = self.get("service", service)?;
                let port = service["spec"]["ports"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == port_name)?;
                u16::try_from(port["nodePort"].as_u64()?).ok()
            },
        )
    }

    /// The Service's EndpointSlices as the API serves them.
    fn slices(&self, service: &str) -> Vec<Value> {
        let selector = format!("kubernetes.io/service-name={service}");
        let out = self.server.kubectl(
            &self.kubectl,
            &["get", "endpointslices", "-l", &selector, "-o", "json"],
        );
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|list| list["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Names of the pods behind the Service's ready endpoints.
    fn ready_pods(&self, service: &str) -> BTreeSet<String> {
        self.slices(service)
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] != false)
            .filter_map(|e| e["targetRef"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until exactly `pods` are the Service's ready endpoints in the API.
    fn wait_ready_pods(&self, service: &str, pods: &[&str]) {
        let want: BTreeSet<String> = pods.iter().map(|p| p.to_string()).collect();
        eventually(
            &format!("service {service}'s ready endpoints to be {want:?}"),
            PATIENCE,
            || (self.ready_pods(service) == want).then_some(()),
        );
    }

    /// `wl-probe args...` from the node (its namespace and the agent's cgroup).
    fn probe_from_node(&self, args: &[&str]) -> Output {
        self.agent
            .node_client_output(&proxy::wl_probe_bin(), args)
            .expect("run wl-probe on the node")
    }

    /// `wl-probe args...` from the node: its stdout lines when it succeeds, else what it said.
    fn probe_lines(&self, args: &[&str]) -> Result<Vec<String>, String> {
        let out = self.probe_from_node(args);
        if out.status.success() {
            Ok(lines(&out.stdout))
        } else {
            Err(format!(
                "wl-probe {} from the node: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `wl-probe args...` from the node, which must succeed.
    fn probe_ok(&self, args: &[&str]) -> Vec<String> {
        let out = self.probe_from_node(args);
        assert!(
            out.status.success(),
            "wl-probe {} from the node failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    }

    /// What `container` of `pod` printed so far.
    fn pod_log(&self, pod: &str, container: &str) -> String {
        proxy::pod_log(&self.agent.pod_log_dir(), "default", pod, container)
    }

    /// Runs a client pod from the wl-probe image with `script` (sh -c) to completion and
    /// returns its output; the pod must succeed.
    fn run_client_pod(&self, name: &str, script: &str) -> String {
        self.create(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {PROBE_IMAGE}
    command: ["sh", "-c", {script:?}]
"#
        ));
        let pod = self.wait_pod(name, "finished", |p| {
            p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed"
        });
        let log = self.pod_log(name, "client");
        assert_eq!(
            pod["status"]["phase"], "Succeeded",
            "client pod {name} failed; it printed:\n{log}\n{pod:#}"
        );
        log
    }
}

/// Calls `check` every 200 ms until it returns `Ok`, for at most [`PATIENCE`]; then fails with
/// `what` and the last `Err`, the evidence of what was seen instead.
fn until<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let last = match check() {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}; last seen: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Passes when the backends that answered `lines` are exactly `want`.
fn exactly(lines: &[String], want: &[&str]) -> Result<(), String> {
    let seen = backends_of(lines);
    if seen == set(want) {
        Ok(())
    } else {
        Err(format!("answered by {seen:?}, want {want:?}"))
    }
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A backend pod labelled `app: <app>`: busybox answering TCP on [`TCP_TARGET`] with its name
/// and then echoing; with `udp`, a wl-probe container answering UDP on [`UDP_TARGET`]; with
/// `ready_file`, a readiness probe that passes while that file (on the host, mounted from its
/// directory) exists.
fn backend(name: &str, app: &str, udp: bool, ready_file: Option<&Path>) -> String {
    let mut manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: tcp
    image: windlass.local/busybox:latest
    command: ["sh", "-c", "exec nc -ll -p {TCP_TARGET} -e sh -c 'echo $POD_NAME; exec cat'"]
    env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
    ports: [{{name: web, containerPort: {TCP_TARGET}}}]
"#
    );
    if let Some(file) = ready_file {
        let file_name = file
            .file_name()
            .and_then(|f| f.to_str())
            .expect("a readiness file name");
        manifest.push_str(&format!(
            r#"    readinessProbe:
      exec: {{command: ["cat", "/ctl/{file_name}"]}}
      periodSeconds: 1
      failureThreshold: 1
    volumeMounts: [{{name: ctl, mountPath: /ctl}}]
"#
        ));
    }
    if udp {
        manifest.push_str(&format!(
            r#"  - name: udp
    image: {PROBE_IMAGE}
    command: ["sh", "-c", "exec {PROBE_IN_IMAGE} udp-serve {UDP_TARGET} $POD_NAME"]
    env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
    ports: [{{name: dns, containerPort: {UDP_TARGET}, protocol: UDP}}]
"#
        ));
    }
    if let Some(file) = ready_file {
        let dir = file.parent().expect("a readiness file's directory");
        manifest.push_str(&format!(
            "  volumes:\n  - {{name: ctl, hostPath: {{path: {}, type: Directory}}}}\n",
            dir.display()
        ));
    }
    manifest
}

/// A Service `name` selecting `app: <app>`: port `http` 80 → [`TCP_TARGET`]/TCP, with `udp` also
/// `dns` 53 → [`UDP_TARGET`]/UDP; `extra_spec` is added to its spec (`type: NodePort`,
/// `sessionAffinity: ClientIP`).
fn service(name: &str, app: &str, udp: bool, extra_spec: &str) -> String {
    let mut manifest = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {app}}}
{extra_spec}  ports:
  - {{name: http, port: 80, targetPort: {TCP_TARGET}, protocol: TCP}}
"#
    );
    if udp {
        manifest.push_str(&format!(
            "  - {{name: dns, port: 53, targetPort: {UDP_TARGET}, protocol: UDP}}\n"
        ));
    }
    manifest
}

/// Splits `wl-probe` result lines (`<peer> <backend> [rest]`) into (peer, backend).
fn answers(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some((fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .collect()
}

/// The distinct backends that answered.
fn backends_of(lines: &[String]) -> BTreeSet<String> {
    answers(lines).into_iter().map(|(_, b)| b).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Asserts that every answer came from `peer` and from one of `backends`, `count` of them.
fn assert_answers(what: &str, lines: &[String], count: usize, peer: &str, backends: &[&str]) {
    let answers = answers(lines);
    assert_eq!(answers.len(), count, "{what}: {lines:#?}");
    for (from, backend) in &answers {
        assert_eq!(
            from, peer,
            "{what}: the application sees the service address as its peer: {lines:#?}"
        );
        assert!(
            backends.contains(&backend.as_str()),
            "{what}: answered by {backend}, not one of {backends:?}: {lines:#?}"
        );
    }
}

/// A `wl-probe tcp-session` held open from the node: lines go in on stdin, echoes come back.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Session {
    /// A session from the node (its namespace and the agent's cgroup); returns it with the
    /// peer address it sees and the backend that greeted it.
    fn open(cluster: &Cluster, addr: &str) -> (Session, String, String) {
        let child = cluster
            .agent
            .spawn_node_client(&proxy::wl_probe_bin(), &["tcp-session", addr])
            .expect("start wl-probe tcp-session on the node");
        Session::start(child).unwrap_or_else(|e| panic!("a session to {addr} from the node: {e}"))
    }

    /// A session from `node` outside any agent cgroup (another machine, for a NodePort), or
    /// what went wrong.
    fn try_open_from(node: &Node, addr: &str) -> Result<(Session, String, String), String> {
        let mut command = Command::new(proxy::wl_probe_bin());
        command
            .args(["tcp-session", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = node
            .ns
            .run(|| command.spawn())
            .expect("enter the node namespace")
            .expect("start wl-probe tcp-session");
        Session::start(child)
    }

    /// Wraps a started `wl-probe tcp-session` and reads its greeting: `<peer> <backend>`.
    fn start(mut child: Child) -> Result<(Session, String, String), String> {
        let stdin = child.stdin.take();
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
        let mut session = Session {
            child,
            stdin,
            lines: rx,
        };
        let first = session.try_next_line()?;
        let mut fields = first.split_whitespace();
        let peer = fields.next().unwrap_or_default().to_string();
        let backend = fields.next().unwrap_or_default().to_string();
        Ok((session, peer, backend))
    }

    /// The next line within 10 s, or (the client killed) what it said on stderr.
    fn try_next_line(&mut self) -> Result<String, String> {
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => Ok(line),
            Err(_) => {
                let _ = self.child.kill();
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                Err(format!("no line from the session; wl-probe said: {stderr}"))
            }
        }
    }

    fn next_line(&mut self, what: &str) -> String {
        self.try_next_line()
            .unwrap_or_else(|e| panic!("held-open session ({what}): {e}"))
    }

    /// Sends `text` on the established connection; the backend must echo it.
    fn echo(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("session stdin");
        writeln!(stdin, "{text}").expect("write to the session");
        stdin.flush().expect("flush the session");
        let back = self.next_line(&format!("the echo of {text}"));
        assert_eq!(back, text, "the established connection still carries data");
    }

    /// Closes stdin; the client must exit cleanly.
    fn close(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for the session");
        assert!(status.success(), "the session ended with {status}");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn clusterip_serves_tcp_and_udp_from_a_pod_and_from_the_node() {
    let cluster = Cluster::start(1);
    cluster.create(&backend("web-0", "web", true, None));
    cluster.create(&backend("web-1", "web", true, None));
    cluster.create(&service("web", "web", true, ""));
    cluster.wait_ready_pods("web", &["web-0", "web-1"]);
    let ip = cluster.cluster_ip("web");
    let http = format!("{ip}:80");
    let dns = format!("{ip}:53");
    let backends = ["web-0", "web-1"];

    // TCP from the node: the connection reaches a backend, getpeername shows the ClusterIP.
    let tcp = until("a TCP connection to the ClusterIP from the node", || {
        cluster.probe_lines(&["tcp-get", &http, "1"])
    });
    assert_answers("TCP from the node", &tcp, 1, &http, &backends);
    let tcp = cluster.probe_ok(&["tcp-get", &http, "20"]);
    assert_answers("TCP from the node", &tcp, 20, &http, &backends);

    // UDP from the node, DNS-shaped: an unconnected socket's reply comes from ClusterIP:53.
    let udp = until("a UDP answer through the ClusterIP from the node", || {
        cluster.probe_lines(&["udp-query", &dns, "who", "1"])
    });
    assert_answers("UDP from the node", &udp, 1, &dns, &backends);
    let udp = cluster.probe_ok(&["udp-query", &dns, "who", "20"]);
    assert_answers("UDP from the node", &udp, 20, &dns, &backends);
    assert!(
        udp.iter().all(|l| l.ends_with(" who")),
        "each reply answers its query: {udp:#?}"
    );

    // The same from a pod, TCP and unconnected UDP.
    let log = cluster.run_client_pod(
        "client",
        &format!("{PROBE_IN_IMAGE} tcp-get {http} 10 && {PROBE_IN_IMAGE} udp-query {dns} who 10"),
    );
    let log: Vec<String> = log.lines().map(str::to_string).collect();
    let (tcp, udp): (Vec<String>, Vec<String>) =
        log.into_iter().partition(|l| l.starts_with(&http));
    assert_answers("TCP from a pod", &tcp, 10, &http, &backends);
    assert_answers("UDP from a pod", &udp, 10, &dns, &backends);

    // The agent counts the connections per service port.
    let metrics = until("the proxy's metrics on the default metrics address", || {
        proxy::metrics(cluster.topology.node(0), METRICS_PORT).map_err(|e| e.to_string())
    });
    let want = [
        ("namespace", "default".to_string()),
        ("service", "web".to_string()),
        ("port", "http".to_string()),
        ("frontend", format!("{http}/TCP")),
    ];
    let count = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("windlass_proxy_service_connections_total{"))
        .filter_map(|l| l.rsplit_once('}'))
        .find(|(labels, _)| {
            let labels: Vec<&str> = labels.split(',').collect();
            want.iter()
                .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"").as_str()))
        })
        .and_then(|(_, value)| value.trim().parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!("no windlass_proxy_service_connections_total with {want:?} in the metrics:\n{metrics}")
        });
    assert!(
        count >= 31.0,
        "31 TCP connections went through {http}, the counter says {count}"
    );
}

/// The network namespace of pod `pod` (the oci runtime pins it under the agent's data dir), found
/// by the pod's IP.
fn pod_netns(cluster: &Cluster, pod: &str) -> windlass_tests::NetNs {
    let ip =
        cluster.wait_pod(pod, "an IP", |p| p["status"]["podIP"].is_string())["status"]["podIP"]
            .as_str()
            .expect("podIP")
            .to_string();
    let sandboxes = cluster.agent.data_dir().join("sandboxes");
    for entry in std::fs::read_dir(&sandboxes).expect("read the agent's sandboxes") {
        let path = entry.expect("sandbox entry").path().join("ns").join("net");
        let Ok(ns) = windlass_tests::NetNs::open(&path) else {
            continue;
        };
        let out = ns
            .run(|| {
                Command::new("ip")
                    .args(["-4", "-o", "addr", "show"])
                    .output()
            })
            .expect("enter the pod namespace")
            .expect("run ip addr");
        if String::from_utf8_lossy(&out.stdout).contains(&format!(" {ip}/")) {
            return ns;
        }
    }
    panic!(
        "no sandbox of {} holds pod {pod}'s address {ip}",
        sandboxes.display()
    );
}

#[test]
fn a_pod_outside_the_socket_hooks_is_served_by_the_tc_path_even_to_itself() {
    let cluster = Cluster::start(1);
    cluster.create(&backend("tc-0", "tc", true, None));
    cluster.create(&backend("tc-1", "tc", true, None));
    cluster.create(&service("tc", "tc", true, ""));
    cluster.wait_ready_pods("tc", &["tc-0", "tc-1"]);
    let ip = cluster.cluster_ip("tc");
    let http = format!("{ip}:80");
    let dns = format!("{ip}:53");
    let backends = ["tc-0", "tc-1"];
    // A client in pod tc-0's network namespace but in no agent cgroup: no socket hook sees it,
    // so its packets are translated by the tc program on the pod's veth (and back on the
    // backend's). One of the two backends is tc-0 itself: that hairpin needs the link-local
    // source, or the reply would never leave the pod.
    let ns = pod_netns(&cluster, "tc-0");
    let probe = proxy::wl_probe_bin();
    let run = |args: &[&str]| -> Vec<String> {
        let out = ns
            .run(|| Command::new(&probe).args(args).output())
            .expect("enter the pod namespace")
            .expect("run wl-probe");
        assert!(
            out.status.success(),
            "wl-probe {} in pod tc-0's namespace: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    };
    let tcp = run(&["tcp-get", &http, "30"]);
    assert_answers("TCP through tc", &tcp, 30, &http, &backends);
    assert_eq!(
        backends_of(&tcp),
        set(&backends),
        "30 connections reach both backends, the client's own pod too: {tcp:#?}"
    );
    let udp = run(&["udp-query", &dns, "who", "20"]);
    assert_answers("UDP through tc", &udp, 20, &dns, &backends);
}

#[test]
fn nodeport_from_another_node_reaches_a_backend_and_the_reply_comes_from_the_node() {
    let cluster = Cluster::start(2);
    cluster.create(&backend("np-0", "np", true, None));
    cluster.create(&backend("np-1", "np", true, None));
    cluster.create(&service("np", "np", true, "  type: NodePort\n"));
    cluster.wait_ready_pods("np", &["np-0", "np-1"]);
    let tcp_port = cluster.node_port("np", "http");
    let udp_port = cluster.node_port("np", "dns");
    let node_ip = cluster.topology.node(0).underlay_ip;
    let backends = ["np-0", "np-1"];
    let other = cluster.topology.node(1);
    let probe = proxy::wl_probe_bin();

    // From node 1, which runs no agent: plain packets to node 0's address.
    let http = format!("{node_ip}:{tcp_port}");
    let from_other = |args: &[&str]| {
        let out = other.output(&probe, args).expect("run wl-probe on node 1");
        if out.status.success() {
            Ok(lines(&out.stdout))
        } else {
            Err(format!(
                "wl-probe {} on node 1: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let tcp = until("a TCP NodePort connection from another node", || {
        from_other(&["tcp-get", &http, "1"])
    });
    assert_answers("TCP NodePort from another node", &tcp, 1, &http, &backends);
    let tcp = from_other(&["tcp-get", &http, "20"]).expect("20 NodePort connections");
    assert_answers("TCP NodePort from another node", &tcp, 20, &http, &backends);

    // UDP: the reply's source is node 0's address and the NodePort (reverse NAT), or an
    // unconnected socket would see a pod address.
    let dns = format!("{node_ip}:{udp_port}");
    let udp = until("a UDP NodePort answer from another node", || {
        from_other(&["udp-query", &dns, "who", "1"])
    });
    assert_answers("UDP NodePort from another node", &udp, 1, &dns, &backends);
    let udp = from_other(&["udp-query", &dns, "who", "20"]).expect("20 NodePort queries");
    assert_answers("UDP NodePort from another node", &udp, 20, &dns, &backends);

    // From node 0 itself, through its own address and through 127.0.0.1.
    for address in [node_ip, Ipv4Addr::LOCALHOST] {
        let target = format!("{address}:{tcp_port}");
        let tcp = until(&format!("NodePort {target} from the node"), || {
            cluster.probe_lines(&["tcp-get", &target, "10"])
        });
        assert_answers("TCP NodePort from the node", &tcp, 10, &target, &backends);
    }
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    let cluster = Cluster::start(1);
    for name in ["aff-0", "aff-1", "aff-2"] {
        cluster.create(&backend(name, "aff", false, None));
    }
    cluster.create(&service(
        "sticky",
        "aff",
        false,
        "  sessionAffinity: ClientIP\n",
    ));
    cluster.create(&service("spread", "aff", false, ""));
    cluster.wait_ready_pods("sticky", &["aff-0", "aff-1", "aff-2"]);
    cluster.wait_ready_pods("spread", &["aff-0", "aff-1", "aff-2"]);
    let sticky = format!("{}:80", cluster.cluster_ip("sticky"));
    let spread = format!("{}:80", cluster.cluster_ip("spread"));
    let all = ["aff-0", "aff-1", "aff-2"];

    // Without affinity one client is spread over the backends (random choice: 30 connections
    // all on one of three backends would happen with probability 3^-29).
    let seen = until(
        "connections without affinity to reach several backends",
        || {
            let lines = cluster.probe_lines(&["tcp-get", &spread, "30"])?;
            let seen = backends_of(&lines);
            if seen.len() > 1 {
                Ok(seen)
            } else {
                Err(format!("30 connections all answered by {seen:?}"))
            }
        },
    );
    assert!(seen.is_subset(&set(&all)), "{seen:?}");

    // With ClientIP affinity the node's connections all land on one backend, every time.
    let lines = until("connections to the sticky service", || {
        cluster.probe_lines(&["tcp-get", &sticky, "30"])
    });
    assert_answers("sticky from the node", &lines, 30, &sticky, &all);
    let first = backends_of(&lines);
    assert_eq!(first.len(), 1, "one client, one backend: {lines:#?}");
    let again = backends_of(&cluster.probe_ok(&["tcp-get", &sticky, "30"]));
    assert_eq!(again, first, "the client stays on its backend");

    // A pod is another client: it too stays on one backend (which may be another one).
    let log = cluster.run_client_pod(
        "other-client",
        &format!("{PROBE_IN_IMAGE} tcp-get {sticky} 30"),
    );
    let log: Vec<String> = log.lines().map(str::to_string).collect();
    assert_answers("sticky from a pod", &log, 30, &sticky, &all);
    assert_eq!(
        backends_of(&log).len(),
        1,
        "the pod stays on one backend: {log:#?}"
    );
}

#[test]
fn connections_follow_endpoints_scaled_3_1_3_while_an_established_one_stays_up() {
    let cluster = Cluster::start(1);
    for name in ["scale-0", "scale-1", "scale-2"] {
        cluster.create(&backend(name, "scale", false, None));
    }
    cluster.create(&service("scale", "scale", false, ""));
    cluster.wait_ready_pods("scale", &["scale-0", "scale-1", "scale-2"]);
    let addr = format!("{}:80", cluster.cluster_ip("scale"));
    until("connections to reach all three backends", || {
        exactly(
            &cluster.probe_lines(&["tcp-get", &addr, "30"])?,
            &["scale-0", "scale-1", "scale-2"],
        )
    });

    // A connection held open from the node; its backend is the one that stays.
    let (mut session, peer, kept) = Session::open(&cluster, &addr);
    assert_eq!(peer, addr, "the session's peer is the service address");
    session.echo("before scaling down");
    let gone: Vec<&str> = ["scale-0", "scale-1", "scale-2"]
        .into_iter()
        .filter(|n| *n != kept)
        .collect();

    // 3 → 1: new connections all go to the one left.
    cluster.delete_pods(&gone);
    cluster.wait_ready_pods("scale", &[&kept]);
    until("new connections to go only to the backend left", || {
        exactly(&cluster.probe_lines(&["tcp-get", &addr, "10"])?, &[&kept])
    });
    let lines = cluster.probe_ok(&["tcp-get", &addr, "30"]);
    assert_answers("after scaling to one", &lines, 30, &addr, &[&kept]);
    session.echo("with one endpoint");

    // 1 → 3: new backends get connections again.
    let new = ["scale-3", "scale-4"];
    for name in new {
        cluster.create(&backend(name, "scale", false, None));
    }
    cluster.wait_ready_pods("scale", &[&kept, new[0], new[1]]);
    until("connections to reach the three backends again", || {
        exactly(
            &cluster.probe_lines(&["tcp-get", &addr, "30"])?,
            &[&kept, new[0], new[1]],
        )
    });
    session.echo("with three endpoints again");
    session.close();
}

#[test]
fn an_endpoint_that_turns_not_ready_gets_no_new_connections() {
    let cluster = Cluster::start(1);
    let ctl = cluster.files.path().join("ctl");
    std::fs::create_dir(&ctl).expect("create the readiness dir");
    for name in ["ready-0", "ready-1"] {
        let file = ctl.join(name);
        std::fs::write(&file, "ready").expect("write a readiness file");
        cluster.create(&backend(name, "ready", false, Some(&file)));
    }
    cluster.create(&service("ready", "ready", false, ""));
    cluster.wait_ready_pods("ready", &["ready-0", "ready-1"]);
    let addr = format!("{}:80", cluster.cluster_ip("ready"));
    until("connections to reach both backends", || {
        exactly(
            &cluster.probe_lines(&["tcp-get", &addr, "30"])?,
            &["ready-0", "ready-1"],
        )
    });

    // ready-1's readiness probe starts failing: it leaves the ready endpoints, and the proxy
    // sends it nothing new.
    std::fs::remove_file(ctl.join("ready-1")).expect("remove the readiness file");
    cluster.wait_pod("ready-1", "not Ready", |p| {
        p["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "False")
        })
    });
    cluster.wait_ready_pods("ready", &["ready-0"]);
    until("new connections to avoid the not-ready backend", || {
        exactly(
            &cluster.probe_lines(&["tcp-get", &addr, "10"])?,
            &["ready-0"],
        )
    });
    let lines = cluster.probe_ok(&["tcp-get", &addr, "40"]);
    assert_answers("with ready-1 not ready", &lines, 40, &addr, &["ready-0"]);

    // Ready again: it gets connections again.
    std::fs::write(ctl.join("ready-1"), "ready").expect("restore the readiness file");
    cluster.wait_ready_pods("ready", &["ready-0", "ready-1"]);
    until("connections to reach both backends again", || {
        exactly(
            &cluster.probe_lines(&["tcp-get", &addr, "30"])?,
            &["ready-0", "ready-1"],
        )
    });
}

#[test]
fn a_service_without_endpoints_is_refused_at_once_and_the_service_cidr_is_unreachable() {
    let cluster = Cluster::start(1);
    cluster.create(&service("empty", "nothing-has-this-label", false, ""));
    let addr = format!("{}:80", cluster.cluster_ip("empty"));
    let refused = |line: &str| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["error", errno, ms] if ["ECONNREFUSED", "EPERM"].contains(errno) => {
                ms.parse::<u64>().ok().map(|ms| (errno.to_string(), ms))
            }
            _ => None,
        }
    };

    // From the node: connect fails at once with ECONNREFUSED or EPERM (the route alone would
    // answer EHOSTUNREACH, an unprogrammed datapath would time out).
    until("connect to the empty service to be refused", || {
        let lines = cluster.probe_lines(&["connect", &addr])?;
        let line = lines.first().cloned().unwrap_or_default();
        refused(&line).ok_or(line)
    });
    for _ in 0..5 {
        let lines = cluster.probe_ok(&["connect", &addr]);
        let line = lines.first().cloned().unwrap_or_default();
        let (errno, ms) = refused(&line)
            .unwrap_or_else(|| panic!("connect to {addr} with no endpoints: {line:?}"));
        assert!(
            ms < 500,
            "refused with {errno} after {ms} ms; it must fail at once"
        );
    }

    // From a pod, the same.
    let log = cluster.run_client_pod("refused", &format!("{PROBE_IN_IMAGE} connect {addr}"));
    let line = log.lines().next().unwrap_or_default();
    let (errno, ms) =
        refused(line).unwrap_or_else(|| panic!("connect from a pod to {addr}: {log:?}"));
    assert!(ms < 500, "refused in a pod with {errno} after {ms} ms");

    // The service CIDR has an unreachable route in the node: an address no service holds is
    // not sent anywhere.
    let node = cluster.topology.node(0);
    let ip = prereq::require_tool("ip");
    let show = node
        .output(&ip, &["route", "show", "exact", "10.96.0.0/16"])
        .expect("ip route show");
    let show = String::from_utf8_lossy(&show.stdout).to_string();
    assert!(
        show.trim_start().starts_with("unreachable 10.96.0.0/16"),
        "the node's route for the service CIDR: {show:?}"
    );
    let get = node
        .output(&ip, &["route", "get", "10.96.255.250"])
        .expect("ip route get");
    assert!(
        !get.status.success() && String::from_utf8_lossy(&get.stderr).contains("No route to host"),
        "ip route get of an unused service address: {}{}",
        String::from_utf8_lossy(&get.stdout),
        String::from_utf8_lossy(&get.stderr)
    );
}

#[test]
fn an_iperf3_stream_and_a_nodeport_session_survive_kill_9_and_restart_of_the_agent() {
    let mut cluster = Cluster::start(2);
    // Besides the stream, a connection from another node through a NodePort: its translation
    // lives in the tc programs' pinned connection tracking, which a restart must not flush.
    cluster.create(&backend("echo-0", "echo", false, None));
    cluster.create(&service("echo", "echo", false, "  type: NodePort\n"));
    cluster.create(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: perf-server, labels: {app: perf}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: iperf3
    image: windlass.local/iperf3:latest
    args: ["-s", "-p", "5201"]
    readinessProbe:
      tcpSocket: {port: 5201}
      periodSeconds: 1
    volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes:
  - {name: tmp, emptyDir: {}}
---
apiVersion: v1
kind: Service
metadata: {name: perf}
spec:
  selector: {app: perf}
  ports:
  - {name: iperf, port: 5201, targetPort: 5201, protocol: TCP}
"#,
    );
    cluster.wait_ready_pods("perf", &["perf-server"]);
    cluster.wait_ready_pods("echo", &["echo-0"]);
    let ip = cluster.cluster_ip("perf");
    let node_port = format!(
        "{}:{}",
        cluster.topology.node(0).underlay_ip,
        cluster.node_port("echo", "http")
    );
    let node = cluster.agent.node_name().to_string();
    let bpf_root = cluster.agent.bpf_root().to_path_buf();
    let has_frontend = |dump: &Value| {
        dump.as_array().is_some_and(|f| {
            f.iter().any(|f| {
                f["address"] == ip.to_string()
                    && f["port"] == 5201
                    && f["backends"].as_array().is_some_and(|b| b.len() == 1)
            })
        })
    };
    let dumped = || {
        let dump = proxy::proxy_dump(&bpf_root, &node).map_err(|e| e.to_string())?;
        if has_frontend(&dump) {
            Ok(())
        } else {
            Err(format!("no {ip}:5201 with one backend in {dump:#}"))
        }
    };
    until("the datapath to hold the perf service", dumped);

    cluster.create(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: perf-client}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: iperf3
    image: windlass.local/iperf3:latest
    args: ["-c", "{ip}", "-p", "5201", "-t", "20", "-i", "1", "-J"]
    volumeMounts: [{{name: tmp, mountPath: /tmp}}]
  volumes:
  - {{name: tmp, emptyDir: {{}}}}
"#
    ));
    cluster.wait_pod("perf-client", "Running", |p| {
        p["status"]["phase"] == "Running" || p["status"]["phase"] == "Succeeded"
    });
    let (mut session, peer, backend) = until("a NodePort session from another node", || {
        // The first attempts may come before the NodePort is programmed.
        Session::try_open_from(cluster.topology.node(1), &node_port)
    });
    assert_eq!(
        (peer.as_str(), backend.as_str()),
        (node_port.as_str(), "echo-0")
    );
    session.echo("before the agent dies");
    // The stream is under way; kill the agent in its middle.
    std::thread::sleep(Duration::from_secs(4));
    cluster.agent.kill9();
    session.echo("while the agent is down");

    // With no agent the pinned datapath still serves the service: a new connection from the
    // node gets through (iperf3 answers a second client and closes it, leaving the stream be).
    let lines = cluster.probe_ok(&["connect", &format!("{ip}:5201")]);
    assert!(
        lines.first().is_some_and(|l| l.starts_with("ok ")),
        "a new connection while the agent is down: {lines:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    cluster.agent.restart().expect("restart the agent");
    until("the restarted agent to answer on its metrics port", || {
        proxy::metrics(cluster.topology.node(0), METRICS_PORT).map_err(|e| e.to_string())
    });
    session.echo("after the agent restarted");

    let pod = eventually("the iperf3 client to finish", PATIENCE, || {
        let pod = cluster.get("pod", "perf-client")?;
        let phase = pod["status"]["phase"].as_str()?;
        ["Succeeded", "Failed"].contains(&phase).then_some(pod)
    });
    let log = cluster.pod_log("perf-client", "iperf3");
    assert_eq!(
        pod["status"]["phase"], "Succeeded",
        "iperf3 through {ip} failed across the agent's restart:\n{log}"
    );
    let report: Value = serde_json::from_str(log.trim())
        .unwrap_or_else(|e| panic!("iperf3 -J printed no JSON ({e}):\n{log}"));
    assert!(
        report.get("error").is_none(),
        "iperf3 reports an error: {log}"
    );
    let intervals = report["intervals"].as_array().cloned().unwrap_or_default();
    assert!(
        intervals.len() >= 19,
        "20 s of one-second intervals, got {}: {log}",
        intervals.len()
    );
    for (i, interval) in intervals.iter().enumerate() {
        let bytes = interval["sum"]["bytes"].as_u64().unwrap_or(0);
        assert!(
            bytes > 0,
            "interval {i} carried no bytes (the stream stalled): {interval:#}"
        );
    }

    // The restarted agent adopted the datapath: the service is still there and still serves.
    until("the restarted agent to keep the perf service", dumped);
    let lines = cluster.probe_ok(&["connect", &format!("{ip}:5201")]);
    assert!(
        lines.first().is_some_and(|l| l.starts_with("ok ")),
        "a new connection after the restart: {lines:?}"
    );
    session.echo("at the end");
    session.close();
}

/// One frontend as the dump shows it: (address, port, protocol, scope).
type FrontendKey = (String, u16, String, String);

#[test]
fn proxy_dump_shows_each_service_port_with_exactly_its_ready_endpoints() {
    let cluster = Cluster::start(1);
    cluster.create(&backend("dump-0", "dump", true, None));
    cluster.create(&backend("dump-1", "dump", true, None));
    // Never ready: its readiness file does not exist.
    let ctl = cluster.files.path().join("ctl");
    std::fs::create_dir(&ctl).expect("create the readiness dir");
    cluster.create(&backend("dump-2", "dump", true, Some(&ctl.join("dump-2"))));
    cluster.create(&service("multi", "dump", true, ""));
    cluster.create(&service(
        "np",
        "dump",
        false,
        "  type: NodePort\n  sessionAffinity: ClientIP\n",
    ));
    cluster.wait_pod("dump-2", "Running", |p| p["status"]["phase"] == "Running");
    cluster.wait_ready_pods("multi", &["dump-0", "dump-1"]);
    cluster.wait_ready_pods("np", &["dump-0", "dump-1"]);
    assert!(
        cluster
            .slices("multi")
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .any(|e| e["targetRef"]["name"] == "dump-2"),
        "the not-ready pod is in the EndpointSlice, as not ready"
    );

    // What the API says: for every Service port, its frontends and the ready endpoints'
    // IP:targetPort (the target port from the EndpointSlice's port of the same name).
    let expected = || {
        let mut want: BTreeMap<FrontendKey, (BTreeSet<(String, u16)>, Value)> = BTreeMap::new();
        for name in ["multi", "np"] {
            let svc = cluster.get("service", name)?;
            let cluster_ip = svc["spec"]["clusterIP"].as_str()?.to_string();
            let affinity = if svc["spec"]["sessionAffinity"] == "ClientIP" {
                Value::from(10800)
            } else {
                Value::Null
            };
            let slices = cluster.slices(name);
            for port in svc["spec"]["ports"].as_array()? {
                let protocol = port["protocol"].as_str().unwrap_or("TCP").to_string();
                let mut backends = BTreeSet::new();
                for slice in &slices {
                    let Some(target) = slice["ports"]
                        .as_array()?
                        .iter()
                        .find(|p| p["name"] == port["name"])
                        .and_then(|p| p["port"].as_u64())
                        .and_then(|p| u16::try_from(p).ok())
                    else {
                        continue;
                    };
                    for endpoint in slice["endpoints"].as_array()? {
                        if endpoint["conditions"]["ready"] == false {
                            continue;
                        }
                        for address in endpoint["addresses"].as_array()? {
                            backends.insert((address.as_str()?.to_string(), target));
                        }
                    }
                }
                let service_port = u16::try_from(port["port"].as_u64()?).ok()?;
                want.insert(
                    (
                        cluster_ip.clone(),
                        service_port,
                        protocol.clone(),
                        "internal".into(),
                    ),
                    (backends.clone(), affinity.clone()),
                );
                if let Some(node_port) = port["nodePort"].as_u64() {
                    let node_port = u16::try_from(node_port).ok()?;
                    for scope in ["internal", "external"] {
                        want.insert(
                            ("0.0.0.0".into(), node_port, protocol.clone(), scope.into()),
                            (backends.clone(), affinity.clone()),
                        );
                    }
                }
            }
        }
        Some(want)
    };
    let want = eventually(
        "the services and their endpoints from the API",
        PATIENCE,
        expected,
    );
    assert_eq!(
        want.len(),
        5,
        "multi: http, dns; np: ClusterIP + NodePort twice: {want:?}"
    );
    assert!(
        want.values().all(|(b, _)| b.len() == 2),
        "two ready endpoints behind every port: {want:?}"
    );

    let node = cluster.agent.node_name().to_string();
    let bpf_root = cluster.agent.bpf_root().to_path_buf();
    let ours = |dump: &Value| -> BTreeMap<FrontendKey, (BTreeSet<(String, u16)>, Value)> {
        dump.as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                let key: FrontendKey = (
                    f["address"].as_str()?.to_string(),
                    u16::try_from(f["port"].as_u64()?).ok()?,
                    f["protocol"].as_str()?.to_string(),
                    f["scope"].as_str()?.to_string(),
                );
                want.contains_key(&key).then_some(())?;
                let backends = f["backends"]
                    .as_array()?
                    .iter()
                    .filter_map(|b| {
                        Some((
                            b["address"].as_str()?.to_string(),
                            u16::try_from(b["port"].as_u64()?).ok()?,
                        ))
                    })
                    .collect();
                Some((key, (backends, f["affinityTimeoutSeconds"].clone())))
            })
            .collect()
    };
    let dump = until("windlass proxy dump to match the API", || {
        let dump = proxy::proxy_dump(&bpf_root, &node).map_err(|e| e.to_string())?;
        let got = ours(&dump);
        if got == want {
            Ok(dump)
        } else {
            Err(format!(
                "the API says {want:#?}\nthe dump holds {got:#?}\nthe whole dump: {dump:#}"
            ))
        }
    });

    // Every one of our frontends says what it is; every backend is this node's and live.
    let frontends = dump.as_array().expect("the dump is an array");
    for f in frontends {
        let Some(address) = f["address"].as_str() else {
            panic!("a frontend without an address: {f:#}");
        };
        let node_port = address == "0.0.0.0";
        if f["scope"] == "external" {
            assert!(
                node_port,
                "only NodePort frontends have an external scope: {f:#}"
            );
        }
        let key: FrontendKey = (
            address.to_string(),
            u16::try_from(f["port"].as_u64().unwrap_or(0)).unwrap_or(0),
            f["protocol"].as_str().unwrap_or_default().to_string(),
            f["scope"].as_str().unwrap_or_default().to_string(),
        );
        if !want.contains_key(&key) {
            continue;
        }
        assert_eq!(f["nodePort"], node_port, "{f:#}");
        assert!(f["serviceId"].as_u64().is_some(), "{f:#}");
        for b in f["backends"].as_array().into_iter().flatten() {
            assert_eq!(b["local"], true, "every pod runs on this node: {b:#}");
            assert_eq!(b["terminating"], false, "{b:#}");
        }
    }
    // The dump is sorted by (address, port, protocol, scope).
    let keys: Vec<(Ipv4Addr, u64, String, String)> = frontends
        .iter()
        .map(|f| {
            (
                f["address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                f["port"].as_u64().unwrap_or(0),
                f["protocol"].as_str().unwrap_or_default().to_string(),
                f["scope"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "the dump is sorted: {dump:#}");
}

#[test]
fn the_agent_fixture_runs_node_clients_in_its_cgroup_and_removes_them_and_its_pins() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::ExitStatusExt;

    prereq::require_root();
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    let topology = Topology::builder().nodes(1).build().expect("topology");
    let node = topology.node(0);
    let agent = TestAgent::start(&server, node, 1.0).expect("start agent");
    let bpf_root = agent.bpf_root().to_path_buf();
    let pins = bpf_root.join(agent.node_name());
    eventually("the agent to pin under <bpf root>/<node>", PATIENCE, || {
        std::fs::read_dir(&pins)
            .ok()
            .and_then(|mut d| d.next())
            .map(|_| ())
    });

    // A client "from the node" runs in the agent's cgroup v2 subtree; one "from another
    // machine" does not.
    let cat = Path::new("/bin/cat");
    let inside = agent
        .node_client_output(cat, &["/proc/self/cgroup"])
        .expect("cat on the node");
    let inside = String::from_utf8_lossy(&inside.stdout).to_string();
    let clients = format!("0::{}/clients", agent.cgroup_root());
    assert!(
        inside.lines().any(|l| l == clients),
        "a node client runs in {clients}: {inside}"
    );
    let outside = node
        .output(cat, &["/proc/self/cgroup"])
        .expect("cat in the node namespace");
    let outside = String::from_utf8_lossy(&outside.stdout).to_string();
    let v2 = outside
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_default();
    assert!(
        !v2.starts_with(&format!("0::{}", agent.cgroup_root())),
        "a client from outside is in no agent cgroup: {outside}"
    );

    // A long-running node client is in the node's network namespace; dropping the agent kills
    // it and removes the cgroup and the pin directory.
    let mut client = agent
        .spawn_node_client(Path::new("/bin/sleep"), &["1000"])
        .expect("start sleep on the node");
    let netns = |path: &str| std::fs::metadata(path).map(|m| m.ino()).ok();
    let pid = client.id();
    eventually("the client to exec", PATIENCE, || {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .filter(|exe| exe.ends_with("sleep"))
    });
    assert_eq!(
        netns(&format!("/proc/{pid}/ns/net")),
        netns(&node.ns.path().display().to_string()),
        "the client runs in the node's network namespace"
    );
    let cgroup_dir = agent.clients_cgroup().expect("clients cgroup");
    drop(agent);
    let status = client.wait().expect("wait for the client");
    assert_eq!(status.signal(), Some(9), "the client was killed: {status}");
    assert!(!cgroup_dir.exists(), "{} is removed", cgroup_dir.display());
    assert!(!bpf_root.exists(), "{} is removed", bpf_root.display());
}
