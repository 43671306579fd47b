//! The kubelet end to end: `windlass server` plus one `windlass agent` inside a node namespace
//! (its own data dir, cgroup subtree and pod log dir), real windlass-cni, pods created with the
//! real kubectl and checked the way a user would.
//!
//! Every scenario runs on both runtimes: `<scenario>_oci` (runc under windlass-shim) and
//! `<scenario>_cri` (a private containerd 1.6 in the node namespace, driven over its CRI socket,
//! running windlass-cni from the conflist the agent writes into its conf dir). Only what differs
//! per runtime is adapted: where a container's pid comes from and what holds the sandboxes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use windlass_tests::agent::{AgentOptions, TestAgent};
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::containerd::Containerd;
use windlass_tests::oci_image::{self, Image};
use windlass_tests::topology::Topology;
use windlass_tests::wait::eventually;
use windlass_tests::{cni, prefix, prereq};

const PATIENCE: Duration = Duration::from_secs(60);
const BUSYBOX: &str = "windlass.local/busybox:latest";

/// Which runtime the agent runs pods with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    /// `--runtime oci`: runc under windlass-shim.
    Oci,
    /// `--runtime cri`: the harness's private containerd.
    Cri,
}

struct Cluster {
    // Drop order: agent (and its pods) first, then containerd (cri), then the topology, then
    // the server.
    agent: TestAgent,
    containerd: Option<Containerd>,
    topology: Topology,
    server: TestServer,
    kubectl: PathBuf,
    images: tempfile::TempDir,
}

impl Cluster {
    fn start(runtime: Runtime, backoff_seconds: f64) -> Cluster {
        prereq::require_root();
        let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
        let topology = Topology::builder().nodes(1).build().expect("topology");
        let images = tempfile::Builder::new()
            .prefix(&format!("{}-images", prefix::unique()))
            .tempdir()
            .expect("tempdir");
        let busybox = oci_image::require_static_busybox();
        let applets = [
            "sh", "sleep", "cat", "echo", "test", "touch", "rm", "ls", "true", "false", "mkdir",
            "env", "head", "dd", "tail", "kill",
        ];
        let archive = images.path().join("busybox.tar");
        Image::from_reference(BUSYBOX)
            .expect("reference")
            .entries(oci_image::busybox_rootfs(&busybox, &applets))
            .cmd(&["sh"])
            .write_archive(&archive)
            .expect("write the busybox archive");
        let (agent, containerd) = match runtime {
            Runtime::Oci => {
                let agent = TestAgent::start(&server, topology.node(0), backoff_seconds)
                    .expect("start agent");
                agent.import_image(&archive).expect("import busybox");
                (agent, None)
            }
            Runtime::Cri => {
                // containerd runs windlass-cni from its bin dir, configured by the conflist the
                // agent writes into containerd's conf dir.
                let containerd = Containerd::builder(&topology.node(0).ns, topology.prefix())
                    .cni_plugin(cni::windlass_cni_bin())
                    .start()
                    .expect("start containerd in the node namespace");
                let pause = oci_image::pause_image(&busybox).expect("pause image");
                containerd.import(&pause).expect("import the pause image");
                containerd
                    .import_archive(&archive, BUSYBOX)
                    .expect("import busybox into containerd");
                eventually("containerd's CRI plugin to see busybox", PATIENCE, || {
                    containerd.image_status(BUSYBOX).ok().flatten().map(|_| ())
                });
                let options = AgentOptions {
                    backoff_base_seconds: backoff_seconds,
                    extra_args: vec![
                        "--runtime".into(),
                        "cri".into(),
                        "--container-runtime-endpoint".into(),
                        format!("unix://{}", containerd.socket().display()),
                        "--cni-conf-dir".into(),
                        containerd.cni_conf_dir().display().to_string(),
                    ],
                    ..Default::default()
                };
                let agent =
                    TestAgent::start_with(&server, topology.node(0), options).expect("start agent");
                (agent, Some(containerd))
            }
        };
        let kubectl = prereq::kubectls().remove(0);
        let cluster = Cluster {
            agent,
            containerd,
            topology,
            server,
            kubectl,
            images,
        };
        let node = cluster.agent.node_name().to_string();
        let node = eventually("the node to be Ready", PATIENCE, || {
            let node = cluster.get("node", &node, None)?;
            let ready = node["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(node)
        });
        // The node says which runtime runs its pods.
        let version = node["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap_or_default();
        let expected = match runtime {
            Runtime::Oci => "runc://",
            Runtime::Cri => "containerd://1.",
        };
        assert!(
            version.starts_with(expected),
            "containerRuntimeVersion {version:?}"
        );
        cluster
    }

    fn get(&self, kind: &str, name: &str, namespace: Option<&str>) -> Option<Value> {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let out = self.server.kubectl(&self.kubectl, &args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn pod(&self, name: &str) -> Value {
        self.get("pod", name, Some("default"))
            .unwrap_or_else(|| panic!("pod {name} not found\n{}", self.agent.log()))
    }

    fn create(&self, manifest: &str) {
        let file = self
            .images
            .path()
            .join(format!("{}.yaml", prefix::unique()));
        std::fs::write(&file, manifest).expect("write manifest");
        self.server.kubectl_ok(
            &self.kubectl,
            &["create", "-f", &file.display().to_string()],
        );
    }

    fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(&format!("pod {name}: {what}"), PATIENCE, || {
            let pod = self.get("pod", name, Some("default"))?;
            check(&pod).then_some(pod)
        })
    }
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no status for container {name}: {pod:#}"))
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("missing")
        .to_string()
}

fn container_id(status: &Value) -> String {
    status["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("windlass://"))
        .unwrap_or_else(|| panic!("no containerID in {status:#}"))
        .to_string()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // cri: with the agent stopped, containerd stops and removes the pods' sandboxes (CNI DEL
        // releases their IPs in the agent's IPAM dir) while the agent's data dir still exists;
        // dropped later, containerd's DEL would re-create that dir after the agent's fixture
        // removed it. The fields then drop in their order: agent, containerd, topology, server.
        let Some(containerd) = &self.containerd else {
            return;
        };
        self.agent.kill9();
        match containerd.list_pod_sandboxes() {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = containerd.stop_pod_sandbox(&id) {
                        eprintln!("cleanup: stop sandbox {id}: {e}");
                    }
                    if let Err(e) = containerd.remove_pod_sandbox(&id) {
                        eprintln!("cleanup: remove sandbox {id}: {e}");
                    }
                }
            }
            Err(e) => eprintln!("cleanup: list sandboxes: {e}"),
        }
    }
}

impl Cluster {
    /// The host pid of a running container's init: from the shim's state file (oci) or from
    /// containerd's verbose `ContainerStatus` (cri).
    fn container_pid(&self, id: &str) -> u32 {
        let Some(containerd) = &self.containerd else {
            let path = self
                .agent
                .data_dir()
                .join("containers")
                .join(id)
                .join("state/container.pid");
            return std::fs::read_to_string(&path)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("no pid in {}", path.display()));
        };
        let mut client = containerd.runtime_client();
        let request = k8s_cri::v1::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        };
        let response = containerd
            .block_on(client.container_status(request))
            .unwrap_or_else(|e| panic!("CRI ContainerStatus {id}: {e}"))
            .into_inner();
        response
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<Value>(info).ok())
            .and_then(|info| info["pid"].as_u64())
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid > 0)
            .unwrap_or_else(|| panic!("no pid in the CRI status of {id}: {response:?}"))
    }

    /// Sandboxes the runtime still holds: sandbox state dirs (oci) or containerd's list (cri).
    fn sandboxes_left(&self) -> Vec<String> {
        match &self.containerd {
            Some(containerd) => containerd.list_pod_sandboxes().expect("CRI ListPodSandbox"),
            None => std::fs::read_dir(self.agent.data_dir().join("sandboxes"))
                .expect("sandboxes dir")
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

const APP_POD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data: {greeting: "hello from a configmap"}
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret}
stringData: {token: "s3cret-value"}
---
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: setup
    image: windlass.local/busybox:latest
    command: ["sh", "-c", "echo initialized > /work/init-done"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: windlass.local/busybox:latest
    command: ["sh", "-c"]
    args:
    - cat /config/greeting; echo; echo "token=$TOKEN pod=$POD_NAME"; touch /tmp/ready; exec sleep 3600
    env:
    - {name: TOKEN, valueFrom: {secretKeyRef: {name: app-secret, key: token}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    volumeMounts:
    - {name: config, mountPath: /config}
    - {name: work, mountPath: /work}
    - {name: host, mountPath: /host}
    readinessProbe:
      exec: {command: ["sh", "-c", "test -f /tmp/ready && test -f /work/init-done"]}
      periodSeconds: 1
    livenessProbe:
      exec: {command: ["true"]}
      periodSeconds: 1
    lifecycle:
      preStop:
        exec: {command: ["sh", "-c", "echo prestop-ran > /host/prestop"]}
    resources:
      requests: {cpu: 100m, memory: 32Mi}
      limits: {memory: 64Mi}
  volumes:
  - {name: config, configMap: {name: app-config}}
  - {name: work, emptyDir: {}}
  - {name: host, hostPath: {path: HOSTDIR, type: Directory}}
"#;

#[test]
fn pod_with_init_configmap_secret_and_probes_runs_ready_then_deletes_cleanly_oci() {
    pod_with_init_configmap_secret_and_probes_runs_ready_then_deletes_cleanly(Runtime::Oci);
}

#[test]
fn pod_with_init_configmap_secret_and_probes_runs_ready_then_deletes_cleanly_cri() {
    pod_with_init_configmap_secret_and_probes_runs_ready_then_deletes_cleanly(Runtime::Cri);
}

fn pod_with_init_configmap_secret_and_probes_runs_ready_then_deletes_cleanly(runtime: Runtime) {
    let cluster = Cluster::start(runtime, 10.0);
    let host_dir = tempfile::Builder::new()
        .prefix(&format!("{}-host", prefix::unique()))
        .tempdir()
        .expect("tempdir");
    cluster.create(&APP_POD.replace("HOSTDIR", &host_dir.path().display().to_string()));

    let pod = cluster.wait_pod("app", "Running and Ready", |p| {
        p["status"]["phase"] == "Running" && condition(p, "Ready") == "True"
    });
    let status = &pod["status"];
    for kind in [
        "PodScheduled",
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ] {
        assert_eq!(condition(&pod, kind), "True", "{kind} in {status:#}");
    }
    assert_eq!(status["qosClass"], "Burstable");
    let pod_ip = status["podIP"].as_str().expect("podIP");
    assert!(pod_ip.starts_with("10.244."), "podIP {pod_ip}");
    assert_eq!(status["podIPs"][0]["ip"], pod_ip);
    assert_eq!(
        status["hostIP"],
        cluster.topology.node(0).underlay_ip.to_string()
    );
    assert!(status["startTime"].is_string());
    let main = container(&pod, "main");
    assert_eq!(main["ready"], true);
    assert_eq!(main["started"], true);
    assert_eq!(main["restartCount"], 0);
    assert!(
        main["state"]["running"]["startedAt"].is_string(),
        "{main:#}"
    );
    assert!(
        main["imageID"]
            .as_str()
            .is_some_and(|id| id.starts_with("sha256:")),
        "{main:#}"
    );
    let init = &status["initContainerStatuses"][0];
    assert_eq!(init["name"], "setup");
    assert_eq!(init["state"]["terminated"]["reason"], "Completed");
    assert_eq!(init["state"]["terminated"]["exitCode"], 0);

    // The container's output, from its CRI log file.
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
    let log_file = cluster
        .agent
        .pod_log_dir()
        .join(format!("default_app_{uid}"))
        .join("main/0.log");
    let log = eventually("the container's log", PATIENCE, || {
        let log = std::fs::read_to_string(&log_file).ok()?;
        log.contains("token=").then_some(log)
    });
    assert!(log.contains("stdout F hello from a configmap"), "{log}");
    assert!(log.contains("stdout F token=s3cret-value pod=app"), "{log}");

    // The pod's cgroup carries the memory limit, under the agent's own root.
    let pid = cluster.container_pid(&container_id(main));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let memory_line = cgroup
        .lines()
        .find(|l| l.split(':').nth(1) == Some("memory"))
        .expect("memory cgroup line");
    let memory_path = memory_line.splitn(3, ':').nth(2).expect("path");
    assert!(
        memory_path.starts_with(&format!(
            "{}/kubepods/burstable/pod{uid}/",
            cluster.agent.cgroup_root()
        )),
        "{memory_path}"
    );
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{memory_path}/memory.limit_in_bytes"
    ))
    .expect("memory.limit_in_bytes");
    assert_eq!(limit.trim(), (64 * 1024 * 1024).to_string());

    // Delete: preStop runs, then nothing of the pod is left.
    cluster
        .server
        .kubectl_ok(&cluster.kubectl, &["delete", "pod", "app", "--wait=false"]);
    eventually("the pod to be gone from the API", PATIENCE, || {
        cluster
            .get("pod", "app", Some("default"))
            .is_none()
            .then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(host_dir.path().join("prestop"))
            .expect("the preStop hook's file")
            .trim(),
        "prestop-ran"
    );
    assert!(!alive(pid), "the container process {pid} is still running");
    let pod_cgroup = format!(
        "/sys/fs/cgroup/memory{}/kubepods/burstable/pod{uid}",
        cluster.agent.cgroup_root()
    );
    assert!(!Path::new(&pod_cgroup).exists(), "{pod_cgroup} is left");
    let data = cluster.agent.data_dir().display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let left: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&data)).collect();
    assert!(left.is_empty(), "mounts left: {left:#?}");
    let sandboxes = cluster.sandboxes_left();
    assert!(sandboxes.is_empty(), "sandboxes left: {sandboxes:?}");
    let ipam = cluster.agent.data_dir().join("cni/windlass");
    let ips: Vec<String> = std::fs::read_dir(&ipam)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(ips.is_empty(), "IPs still allocated: {ips:?}");
    assert!(
        !log_file.exists(),
        "the pod's logs are removed with the pod"
    );
}

#[test]
fn liveness_failure_restarts_and_a_crashing_container_backs_off_oci() {
    liveness_failure_restarts_and_a_crashing_container_backs_off(Runtime::Oci);
}

#[test]
fn liveness_failure_restarts_and_a_crashing_container_backs_off_cri() {
    liveness_failure_restarts_and_a_crashing_container_backs_off(Runtime::Cri);
}

fn liveness_failure_restarts_and_a_crashing_container_backs_off(runtime: Runtime) {
    let cluster = Cluster::start(runtime, 1.0);
    cluster.create(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: flaky}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: windlass.local/busybox:latest
    command: ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600"]
    livenessProbe:
      exec: {command: ["test", "-f", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: main
    image: windlass.local/busybox:latest
    command: ["sh", "-c", "echo crashing; exit 3"]
"#,
    );
    let pod = cluster.wait_pod("flaky", "restarted after a liveness failure", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .is_some_and(|n| n >= 1)
    });
    let main = container(&pod, "main");
    assert!(
        main["lastState"]["terminated"]["exitCode"].is_i64(),
        "lastState after a liveness kill: {main:#}"
    );

    let pod = cluster.wait_pod("crasher", "three restarts", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .is_some_and(|n| n >= 3)
    });
    let main = container(&pod, "main");
    assert_eq!(main["lastState"]["terminated"]["exitCode"], 3, "{main:#}");
    assert_eq!(main["lastState"]["terminated"]["reason"], "Error");
    let pod = cluster.wait_pod("crasher", "in CrashLoopBackOff", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let message = container(&pod, "main")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.starts_with("back-off "), "{message}");
    // The delay grows: with a 1 s base, after three restarts the wait is past the base
    // (0 s, 1 s, 2 s, 4 s, ...).
    let seconds: u64 = message
        .trim_start_matches("back-off ")
        .split('s')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delay in {message:?}"));
    assert!(seconds >= 2, "the back-off did not grow: {message}");
    let restarts = container(&pod, "main")["restartCount"]
        .as_i64()
        .unwrap_or(0);
    assert!(restarts >= 3, "{restarts}");
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed_oci() {
    a_container_over_its_memory_limit_is_oom_killed(Runtime::Oci);
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed_cri() {
    a_container_over_its_memory_limit_is_oom_killed(Runtime::Cri);
}

fn a_container_over_its_memory_limit_is_oom_killed(runtime: Runtime) {
    let cluster = Cluster::start(runtime, 10.0);
    cluster.create(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: windlass.local/busybox:latest
    command: ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]
    resources:
      limits: {memory: 16Mi}
"#,
    );
    let pod = cluster.wait_pod("hog", "terminated", |p| {
        p["status"]["containerStatuses"][0]["state"]["terminated"].is_object()
    });
    let main = container(&pod, "main");
    assert_eq!(
        main["state"]["terminated"]["reason"], "OOMKilled",
        "{main:#}"
    );
    assert_eq!(main["state"]["terminated"]["exitCode"], 137);
    assert_eq!(pod["status"]["phase"], "Failed");
}

#[test]
fn a_killed_agent_readopts_running_pods_without_restarting_them_oci() {
    a_killed_agent_readopts_running_pods_without_restarting_them(Runtime::Oci);
}

#[test]
fn a_killed_agent_readopts_running_pods_without_restarting_them_cri() {
    a_killed_agent_readopts_running_pods_without_restarting_them(Runtime::Cri);
}

fn a_killed_agent_readopts_running_pods_without_restarting_them(runtime: Runtime) {
    let mut cluster = Cluster::start(runtime, 10.0);
    cluster.create(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  containers:
  - name: main
    image: windlass.local/busybox:latest
    command: ["sleep", "3600"]
"#,
    );
    let pod = cluster.wait_pod("steady", "Running and Ready", |p| {
        p["status"]["phase"] == "Running" && condition(p, "Ready") == "True"
    });
    let before = container(&pod, "main").clone();
    let id = container_id(&before);
    let pid = cluster.container_pid(&id);

    cluster.agent.kill9();
    assert!(alive(pid), "the container died with the agent");
    cluster.agent.restart().expect("restart the agent");

    // The restarted agent writes status again (its lease too); the container is the same.
    let node = cluster.agent.node_name().to_string();
    let renewed = |lease: &Value| lease["spec"]["renewTime"].as_str().map(str::to_string);
    let first = cluster
        .get("lease", &node, Some("kube-node-lease"))
        .and_then(|l| renewed(&l));
    eventually("the restarted agent to renew its lease", PATIENCE, || {
        let now = cluster
            .get("lease", &node, Some("kube-node-lease"))
            .and_then(|l| renewed(&l))?;
        (Some(&now) != first.as_ref()).then_some(())
    });
    let pod = cluster.pod("steady");
    let after = container(&pod, "main");
    assert_eq!(container_id(after), id, "a new container was started");
    assert_eq!(after["restartCount"], 0);
    assert_eq!(after["ready"], true);
    assert_eq!(pod["status"]["phase"], "Running");
    assert!(alive(pid));
    assert_eq!(cluster.container_pid(&id), pid);

    // And it still manages the pod: deleting it works after the restart.
    cluster.server.kubectl_ok(
        &cluster.kubectl,
        &["delete", "pod", "steady", "--wait=false"],
    );
    eventually("the pod to be gone", PATIENCE, || {
        cluster
            .get("pod", "steady", Some("default"))
            .is_none()
            .then_some(())
    });
    assert!(!alive(pid), "the container outlived its pod");
}
