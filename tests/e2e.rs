//! The walkthrough of `cargo xtask e2e` (issue 8): a three-node cluster in network namespaces,
//! the way a user builds one: `windlass server` on the fabric, and on each node a `windlass
//! agent --server URL --token T` with its own cgroup subtree and BPF pin directory, pod-to-pod
//! traffic routed across nodes, cluster DNS from each agent and the eBPF proxy. Everything goes
//! through `kubectl` against the server, as a user would drive it.
//!
//! The walk: a Deployment and a NodePort Service; its DNS name fetched from a pod, with answers
//! from pods on other nodes; the NodePort from the fabric (outside every node) on each node's
//! address; a rolling update while a client pod fetches the Service in a loop, with no failed
//! request allowed; a node killed (its agent gone and its uplink down) and its pods replaced on
//! the others, with the Service answering again.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use windlass_tests::agent::{AgentOptions, TestAgent};
use windlass_tests::apiserver::TestServer;
use windlass_tests::proxy;
use windlass_tests::topology::Topology;
use windlass_tests::{prefix, prereq};

/// How long any one step may take.
const PATIENCE: Duration = Duration::from_secs(120);
/// The node lifecycle timings of this cluster (kube-controller-manager: 40 s and 300 s), short so
/// a dead node's pods are replaced within the test.
const NODE_MONITOR_GRACE_SECONDS: &str = "20";
const DEFAULT_TOLERATION_SECONDS: &str = "2";

struct Cluster {
    // Drop order: the agents (their pods, cgroups and pins), the server, then the namespaces.
    agents: Vec<TestAgent>,
    server: TestServer,
    topology: Topology,
    kubectl: PathBuf,
    files: tempfile::TempDir,
}

impl Cluster {
    fn start(nodes: usize) -> Cluster {
        prereq::require_root();
        prereq::require_tool("ip");
        prereq::require_tool("nsenter");
        prereq::require_tool("busybox");
        let busybox = proxy::test_image("busybox");
        let topology = Topology::builder().nodes(nodes).build().expect("topology");
        let server_ip = topology.fabric_address().expect("fabric address");
        let server = TestServer::start_in_with(
            topology.fabric(),
            server_ip,
            &[
                "--node-monitor-grace-seconds",
                NODE_MONITOR_GRACE_SECONDS,
                "--default-toleration-seconds",
                DEFAULT_TOLERATION_SECONDS,
            ],
        )
        .expect("start windlass server on the fabric");
        let token = std::fs::read_to_string(server.data_dir().join("node-token"))
            .expect("read the server's node-token");
        let agents: Vec<TestAgent> = topology
            .nodes()
            .iter()
            .map(|node| {
                let agent = TestAgent::start_with(
                    &server,
                    node,
                    AgentOptions {
                        backoff_base_seconds: 1.0,
                        join_token: Some(token.trim().to_string()),
                        ..Default::default()
                    },
                )
                .expect("start agent");
                agent
                    .import_image(&busybox)
                    .unwrap_or_else(|e| panic!("import {}: {e}", busybox.display()));
                agent
            })
            .collect();
        let files = tempfile::Builder::new()
            .prefix(&format!("{}-e2e", prefix::unique()))
            .tempdir()
            .expect("tempdir");
        let cluster = Cluster {
            agents,
            server,
            topology,
            kubectl: prereq::kubectls().remove(0),
            files,
        };
        for agent in &cluster.agents {
            let name = agent.node_name().to_string();
            cluster.until(&format!("node {name} to be Ready"), || {
                let node = cluster.get("node", &name)?;
                node_ready(&node)
                    .then_some(())
                    .ok_or_else(|| format!("{:#}", node["status"]["conditions"]))
            });
        }
        cluster
    }

    fn node_name(&self, i: usize) -> String {
        self.agents[i].node_name().to_string()
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = self.server.kubectl(&self.kubectl, args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn get(&self, kind: &str, name: &str) -> Result<Value, String> {
        let out = self.kubectl(&["get", kind, name, "-o", "json"])?;
        serde_json::from_str(&out).map_err(|e| format!("{kind} {name}: {e}"))
    }

    fn apply(&self, manifest: &str) {
        let file = self.files.path().join(format!("{}.yaml", prefix::unique()));
        std::fs::write(&file, manifest).expect("write manifest");
        self.kubectl_ok(&["apply", "-f", &file.display().to_string()]);
    }

    /// Calls `check` every 250 ms until it passes, for at most [`PATIENCE`]; then fails with
    /// the last thing it saw.
    fn until<T>(&self, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let last = match check() {
                Ok(value) => return value,
                Err(last) => last,
            };
            if Instant::now() > deadline {
                panic!("timed out after {PATIENCE:?} waiting for {what}; last seen: {last}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The `app=web` pods that are not being deleted, as (name, node, ready).
    fn web_pods(&self) -> Result<Vec<(String, String, bool)>, String> {
        let list: Value =
            serde_json::from_str(&self.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"])?)
                .map_err(|e| e.to_string())?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                    ready,
                )
            })
            .collect())
    }

    /// Waits until the Deployment has rolled out: every replica updated, available and ready,
    /// and no other pod left.
    fn wait_rolled_out(&self, what: &str) {
        self.until(what, || {
            let d = self.get("deployment", "web")?;
            let status = &d["status"];
            let want = d["spec"]["replicas"].as_i64().unwrap_or(-1);
            let done = status["observedGeneration"].as_i64()
                >= d["metadata"]["generation"].as_i64()
                && status["updatedReplicas"].as_i64() == Some(want)
                && status["availableReplicas"].as_i64() == Some(want)
                && status["replicas"].as_i64() == Some(want);
            let pods = self.web_pods()?;
            let ready = pods.iter().filter(|(_, _, r)| *r).count() as i64;
            (done && ready == want && pods.len() as i64 == want)
                .then_some(())
                .ok_or_else(|| format!("status {status}, pods {pods:?}"))
        });
    }

    /// `kubectl logs` of a pod's only container.
    fn logs(&self, pod: &str) -> Result<String, String> {
        self.kubectl(&["logs", pod])
    }

    /// Runs `wget` from the fabric namespace (outside every node).
    fn fetch_from_fabric(&self, url: &str) -> Result<String, String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.topology.fabric().path().display()))
            // busybox 1.35's `wget -T` crashes; `timeout` bounds it instead.
            .args(["busybox", "timeout", "5", "busybox", "wget", "-qO-", url])
            .output()
            .map_err(|e| format!("nsenter: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "wget {url} from the fabric: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The web Deployment: busybox httpd serving `<version> <pod> <node>`, ready once it serves, a
/// preStop pause so endpoints drop it before it stops (the usual recipe for zero-downtime
/// rollouts), and a rolling update that never goes below three ready pods.
fn web(version: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 8
      containers:
      - name: web
        image: windlass.local/busybox:latest
        env:
        - {{name: VERSION, value: "{version}"}}
        - name: POD
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: NODE
          valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
        command: ["sh", "-c", "mkdir -p /www && echo \"v$VERSION $POD $NODE\" > /www/index.html && exec httpd -f -p 8080 -h /www"]
        readinessProbe:
          httpGet: {{path: /index.html, port: 8080}}
          periodSeconds: 1
        lifecycle:
          preStop:
            exec: {{command: ["sleep", "3"]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
"#
    )
}

/// A pod pinned to `node` running `script`.
fn client(name: &str, node: &str, restart: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  restartPolicy: {restart}
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: windlass.local/busybox:latest
    command: ["sh", "-c", {script:?}]
"#
    )
}

/// The loop client's log: answers starting `ok <prefix>`, failures, and the whole log.
fn count(cluster: &Cluster, prefix: &str) -> Result<(usize, usize, String), String> {
    let log = cluster.logs("loop")?;
    let ok = log
        .lines()
        .filter(|l| l.starts_with(&format!("ok {prefix}")))
        .count();
    let failed = log.lines().filter(|l| l.starts_with("FAIL")).count();
    Ok((ok, failed, log))
}

/// The answers (`v<version> <pod> <node>`) in `text`.
fn answers(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip_while(|w| !w.starts_with('v'));
            Some((
                words.next()?.to_string(),
                words.next()?.to_string(),
                words.next()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn three_node_walkthrough_dns_nodeport_rolling_update_without_errors_and_node_loss() {
    let mut cluster = Cluster::start(3);
    let n0 = cluster.node_name(0);

    // 1. A Deployment and a NodePort Service.
    cluster.apply(&web(1));
    cluster.wait_rolled_out("web to roll out (3 ready replicas)");
    let pods = cluster.web_pods().expect("web pods");
    eprintln!("web pods: {pods:?}");

    // 2. Its DNS name from a pod, answered by pods on other nodes too (cross-node routing).
    cluster.apply(&client(
        "dns-client",
        &n0,
        "Never",
        "set -e; cat /etc/resolv.conf; for i in $(seq 1 30); do \
         timeout 5 wget -qO- http://web.default.svc.cluster.local/; timeout 5 wget -qO- http://web/; done",
    ));
    let log = cluster.until("dns-client to finish", || {
        let pod = cluster.get("pod", "dns-client")?;
        match pod["status"]["phase"].as_str() {
            Some("Succeeded") => cluster.logs("dns-client"),
            Some("Failed") => panic!(
                "dns-client failed: {}",
                cluster.logs("dns-client").unwrap_or_default()
            ),
            other => Err(format!("phase {other:?}")),
        }
    });
    assert!(
        log.contains("nameserver 10.96.0.10") && log.contains("search default.svc.cluster.local"),
        "the pod's resolv.conf points at cluster DNS:\n{log}"
    );
    let seen = answers(&log);
    assert_eq!(seen.len(), 60, "every fetch by name answered:\n{log}");
    let remote: BTreeSet<&str> = seen
        .iter()
        .filter(|(_, _, node)| *node != n0)
        .map(|(_, pod, _)| pod.as_str())
        .collect();
    assert!(
        !remote.is_empty(),
        "some answers come from pods on other nodes than {n0}: {seen:?}"
    );

    // 3. The NodePort from the fabric, through every node's address.
    let service = cluster.get("service", "web").expect("service web");
    let node_port = service["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a nodePort");
    for node in cluster.topology.nodes() {
        let url = format!("http://{}:{node_port}/", node.underlay_ip);
        let page = cluster.until(&format!("{url} from the fabric"), || {
            cluster.fetch_from_fabric(&url)
        });
        assert!(page.starts_with("v1 web-"), "NodePort page: {page}");
    }

    // 4. A rolling update while a client fetches the Service in a loop: no request may fail.
    cluster.apply(&client(
        "loop",
        &n0,
        "Always",
        "while :; do if timeout 5 wget -qO- http://web/ >/tmp/r 2>/tmp/e; then echo \"ok $(cat /tmp/r)\"; \
         else echo \"FAIL $(cat /tmp/e)\"; fi; sleep 0.05; done",
    ));
    cluster.until("the loop to have 20 answers from v1", || {
        let (ok, _, log) = count(&cluster, "v1")?;
        (ok >= 20).then_some(()).ok_or(log)
    });
    cluster.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"2"}]"#,
    ]);
    cluster.wait_rolled_out("the rolling update to v2 to finish");
    cluster.until("the loop to have 20 answers from v2", || {
        let (ok, _, log) = count(&cluster, "v2")?;
        (ok >= 20).then_some(()).ok_or(log)
    });
    let (_, failed, log) = count(&cluster, "v").expect("loop log");
    let total = log.lines().filter(|l| l.starts_with("ok ")).count();
    eprintln!("rolling update: {total} requests answered, {failed} failed");
    assert_eq!(
        failed, 0,
        "requests failed during the rolling update:\n{log}"
    );

    // 5. A node dies: its agent is killed and its uplink goes down. Its pods are replaced on
    // the other nodes and the Service answers again. The victim is the node (other than the
    // client's) running the most web pods.
    let pods = cluster.web_pods().expect("web pods");
    let victim = (1..cluster.agents.len())
        .max_by_key(|&i| {
            let name = cluster.node_name(i);
            pods.iter().filter(|(_, node, _)| *node == name).count()
        })
        .expect("a second node");
    let n2 = cluster.node_name(victim);
    let victims: BTreeSet<String> = pods
        .iter()
        .filter(|(_, node, _)| *node == n2)
        .map(|(name, _, _)| name.clone())
        .collect();
    assert!(
        !victims.is_empty(),
        "the replicas spread over the nodes, so {n2} runs one: {pods:?}"
    );
    cluster.agents[victim].kill9();
    let dead = &cluster.topology.node(victim);
    let down = Command::new("nsenter")
        .arg(format!("--net={}", dead.ns.path().display()))
        .args(["ip", "link", "set", &dead.uplink, "down"])
        .status()
        .expect("run ip link");
    assert!(down.success(), "take {n2}'s uplink down");
    cluster.until(&format!("node {n2} to turn NotReady"), || {
        let node = cluster.get("node", &n2)?;
        (!node_ready(&node))
            .then_some(())
            .ok_or_else(|| "still Ready".to_string())
    });
    cluster.until("web to have 3 ready pods, none on the dead node", || {
        let pods = cluster.web_pods()?;
        let ok = pods.len() == 3
            && pods
                .iter()
                .all(|(name, node, ready)| *ready && *node != n2 && !victims.contains(name));
        ok.then_some(()).ok_or_else(|| format!("{pods:?}"))
    });
    eprintln!("pods on {n2} replaced: {victims:?}");
    let (before, _, _) = count(&cluster, "v2").expect("loop log");
    cluster.until(
        "the loop to get 20 more answers after the node loss",
        || {
            let (ok, _, log) = count(&cluster, "v2")?;
            let tail_ok = log.lines().rev().take(10).all(|l| l.starts_with("ok v2"));
            (ok >= before + 20 && tail_ok).then_some(()).ok_or(log)
        },
    );
}
