//! `deploy/*.yaml`, the DaemonSet that runs the agent in place of kube-proxy on an existing
//! cluster: every document parses as its Kubernetes type with no unknown field, the DaemonSet has
//! what an operator relies on (host network, privileged, every taint tolerated, each host mount),
//! the init container installs `windlass-cni` atomically, the ClusterRole covers each resource the
//! agent's node code watches, and the real `windlass agent` accepts the container's arguments.
//!
//! No root, no cluster: the manifest is checked as data, and the binary is started only far enough
//! to parse its flags (it stops at a kubeconfig that does not exist).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

const NAMESPACE: &str = "kube-system";
const NAME: &str = "windlass";
const IMAGE: &str = "windlass.local/windlass:latest";

/// Host paths the agent needs, where it sees them, and whether read-only.
const HOST_MOUNTS: [(&str, bool); 8] = [
    ("/sys/fs/bpf", false),
    ("/sys/fs/cgroup", false),
    ("/run", false),
    ("/var/lib/windlass", false),
    ("/etc/cni/net.d", false),
    ("/opt/cni/bin", false),
    ("/lib/modules", true),
    ("/var/log/pods", false),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every non-empty YAML document of `deploy/*.yaml`, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let dir = root().join("deploy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display()));
        docs.extend(
            values
                .into_iter()
                .filter(|v| !v.is_null())
                .map(|v| (file.clone(), v)),
        );
    }
    docs
}

/// The one document of this kind and name, as its type.
fn find<T: serde::de::DeserializeOwned>(kind: &str, name: &str) -> T {
    let matching: Vec<Value> = documents()
        .into_iter()
        .map(|(_, doc)| doc)
        .filter(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected exactly one {kind} {name} in deploy/"
    );
    serde_json::from_value(matching[0].clone())
        .unwrap_or_else(|e| panic!("{kind} {name} does not parse: {e}"))
}

fn daemonset_pod() -> PodSpec {
    let ds: DaemonSet = find("DaemonSet", NAME);
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
    let spec = ds.spec;
    spec.template.spec.expect("pod template spec")
}

fn agent_container(pod: &PodSpec) -> Container {
    pod.containers
        .iter()
        .find(|c| c.name == NAME)
        .cloned()
        .expect("a container named windlass")
}

/// Parses `value` as `T` and serializes it back: a field the type does not know (a typo, a wrong
/// level of indentation) is dropped on the way and shows up as a difference.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(what: &str, value: &Value) {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &back, value,
        "{what} has fields its type does not know (or values it rewrites):\n  file:  {value}\n  typed: {back}"
    );
}

#[test]
fn every_document_parses_as_its_type() {
    let mut kinds = BTreeSet::new();
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let what = format!(
            "{} {kind} {}",
            file.display(),
            doc["metadata"]["name"].as_str().unwrap_or("?")
        );
        match (
            doc["apiVersion"].as_str().unwrap_or_default(),
            kind.as_str(),
        ) {
            ("v1", "ServiceAccount") => round_trips::<ServiceAccount>(&what, &doc),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                round_trips::<ClusterRole>(&what, &doc)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                round_trips::<ClusterRoleBinding>(&what, &doc)
            }
            ("apps/v1", "DaemonSet") => round_trips::<DaemonSet>(&what, &doc),
            (api_version, _) => panic!("{what}: unexpected {api_version} {kind}; add it here"),
        }
        kinds.insert(kind);
    }
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ] {
        assert!(kinds.contains(kind), "deploy/ has no {kind}");
    }
}

#[test]
fn daemonset_runs_privileged_on_the_host_network_of_every_node() {
    let ds: DaemonSet = find("DaemonSet", NAME);
    let spec = ds.spec.clone();
    let strategy = spec.update_strategy.expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .and_then(|r| r.max_unavailable)
            .map(|m| serde_json::to_value(m).expect("json")),
        Some(serde_json::json!(1))
    );
    let selector = spec.selector.match_labels.expect("matchLabels");
    let labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("template labels");
    for (key, value) in &selector {
        assert_eq!(
            labels.get(key),
            Some(value),
            "the selector must match the template"
        );
    }

    let pod = daemonset_pod();
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.host_pid, Some(true), "hostPID");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration with operator Exists and no key or effect (every taint): {tolerations:?}"
    );

    let agent = agent_container(&pod);
    assert_eq!(agent.image.as_deref(), Some(IMAGE));
    assert_eq!(agent.image_pull_policy.as_deref(), Some("Never"));
    assert_eq!(
        agent.security_context.as_ref().and_then(|s| s.privileged),
        Some(true),
        "the agent container is privileged"
    );
    let env: BTreeMap<String, String> = agent
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let field = e.value_from?.field_ref?.field_path;
            Some((e.name, field))
        })
        .collect();
    assert_eq!(
        env.get("NODE_NAME").map(String::as_str),
        Some("spec.nodeName")
    );
    assert_eq!(
        env.get("NODE_IP").map(String::as_str),
        Some("status.hostIP")
    );
}

#[test]
fn every_host_path_is_mounted() {
    let pod = daemonset_pod();
    let agent = agent_container(&pod);
    let volumes: BTreeMap<String, String> = pod
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| Some((v.name, v.host_path?.path)))
        .collect();
    let mounts = agent.volume_mounts.clone().unwrap_or_default();
    for (path, read_only) in HOST_MOUNTS {
        let mount = mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("the agent container does not mount {path}"));
        assert_eq!(
            volumes.get(&mount.name).map(String::as_str),
            Some(path),
            "{path} must be the host's {path} (volume {})",
            mount.name
        );
        assert_eq!(
            mount.read_only.unwrap_or(false),
            read_only,
            "{path} read-only should be {read_only}"
        );
    }
    let bpffs = mounts
        .iter()
        .find(|m| m.mount_path == "/sys/fs/bpf")
        .expect("bpffs mount");
    assert_eq!(
        bpffs.mount_propagation.as_deref(),
        Some("Bidirectional"),
        "pins under /sys/fs/bpf must outlive the container"
    );
}

#[test]
fn init_container_installs_windlass_cni_atomically() {
    let pod = daemonset_pod();
    let init = pod
        .init_containers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "install-cni")
        .expect("an init container named install-cni");
    assert_eq!(init.image.as_deref(), Some(IMAGE));
    let mount = init
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.mount_path == "/opt/cni/bin")
        .expect("the init container mounts /opt/cni/bin");
    let host = pod
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.host_path)
        .map(|h| h.path);
    assert_eq!(host.as_deref(), Some("/opt/cni/bin"));
    let command = init.command.clone().unwrap_or_default();
    assert_eq!(command.first().map(String::as_str), Some("/bin/sh"));
    let script = command.last().cloned().unwrap_or_default();
    // Copy beside the target, then rename over it: the runtime never runs a half-written plugin.
    let tmp = "/opt/cni/bin/.windlass-cni.tmp";
    let cp = script
        .find(&format!("cp /usr/local/bin/windlass-cni {tmp}"))
        .unwrap_or_else(|| panic!("the script copies windlass-cni to {tmp}: {script}"));
    let mv = script
        .find(&format!("mv -f {tmp} /opt/cni/bin/windlass-cni"))
        .unwrap_or_else(|| panic!("the script renames {tmp} into place: {script}"));
    assert!(cp < mv, "copy before rename: {script}");
    assert!(
        script.starts_with("set -e"),
        "a failed copy must fail the init container: {script}"
    );
}

#[test]
fn liveness_probe_is_the_proxy_metrics_endpoint() {
    let agent = agent_container(&daemonset_pod());
    let probe = agent
        .liveness_probe
        .and_then(|p| p.http_get)
        .expect("an httpGet liveness probe");
    assert_eq!(probe.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(probe.path.as_deref(), Some("/metrics"));
    let port = serde_json::to_value(&probe.port).expect("json");
    let args = agent.args.unwrap_or_default();
    let bind = args
        .iter()
        .position(|a| a == "--metrics-bind-address")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("127.0.0.1:10249");
    assert_eq!(
        format!("127.0.0.1:{port}"),
        bind,
        "the probe must hit the address the agent's metrics listen on"
    );
}

/// `(api group, resource)` for each type the node code names in `Api<...>`, and the verbs it
/// needs. A type missing here fails [`rbac_covers_what_the_agent_uses`]: add it, and the rule
/// to the ClusterRole.
fn resource_of(kind: &str) -> Option<(&'static str, &'static str, &'static [&'static str])> {
    const READ: &[&str] = &["get", "list", "watch"];
    Some(match kind {
        "Service" => ("", "services", READ),
        "EndpointSlice" => ("discovery.k8s.io", "endpointslices", READ),
        "Node" => ("", "nodes", READ),
        "Pod" => ("", "pods", READ),
        "Event" => ("", "events", &["create", "patch"]),
        "Namespace" => ("", "namespaces", READ),
        "ConfigMap" => ("", "configmaps", READ),
        "Secret" => ("", "secrets", READ),
        "Lease" => (
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"],
        ),
        _ => return None,
    })
}

/// Types named as `Api<T>` or `Api::<T>` in the agent's node code, except the kubelet's (the
/// DaemonSet runs with --disable-kubelet; the cluster's own kubelet does that job).
fn api_types_used(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "kubelet") {
                continue;
            }
            api_types_used(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read source");
            for marker in ["Api<", "Api::<"] {
                for (at, _) in text.match_indices(marker) {
                    let rest = &text[at + marker.len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    let kind = name.rsplit("::").next().unwrap_or_default();
                    // Generic helpers (`Api<K>`) are not a resource.
                    if kind.len() > 1 {
                        out.entry(kind.to_string()).or_insert_with(|| path.clone());
                    }
                }
            }
        }
    }
}

fn granted(role: &ClusterRole, group: &str, resource: &str, verb: &str) -> bool {
    role.rules.iter().flatten().any(|rule| {
        rule.api_groups.iter().flatten().any(|g| g == group)
            && rule.resources.iter().flatten().any(|r| r == resource)
            && rule.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_covers_what_the_agent_uses() {
    let role: ClusterRole = find("ClusterRole", NAME);
    // Least privilege: nothing broad, nothing secret.
    for rule in role.rules.iter().flatten() {
        let all = rule
            .verbs
            .iter()
            .chain(rule.resources.iter().flatten())
            .chain(rule.api_groups.iter().flatten());
        for word in all {
            assert_ne!(word, "*", "no wildcards in the ClusterRole: {rule:?}");
        }
        assert!(
            !rule.resources.iter().flatten().any(|r| r == "secrets"),
            "the agent reads no secrets: {rule:?}"
        );
    }

    let mut used = BTreeMap::new();
    api_types_used(&root().join("agent/src/node"), &mut used);
    assert!(
        used.contains_key("Service") && used.contains_key("EndpointSlice"),
        "the proxy's watches were not found (did agent/src/node move?): {used:?}"
    );
    for (kind, file) in &used {
        let (group, resource, verbs) = resource_of(kind).unwrap_or_else(|| {
            panic!(
                "{} uses Api<{kind}>: add it to resource_of() in tests/deploy.rs and to the \
                 ClusterRole in deploy/windlass.yaml",
                file.display()
            )
        });
        for verb in verbs {
            assert!(
                granted(&role, group, resource, verb),
                "{} uses Api<{kind}>, but the ClusterRole does not grant {verb} on \
                 {resource} ({group:?})",
                file.display()
            );
        }
    }
    // And what the proxy, DNS and node network need beside the kubelet, whatever the code
    // names today: list+watch of services, endpointslices, nodes and pods; the node's VXLAN
    // annotations (patch); events.
    for (group, resource, verb) in [
        ("", "services", "watch"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "nodes", "patch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "events", "create"),
        ("", "events", "patch"),
    ] {
        assert!(
            granted(&role, group, resource, verb),
            "the ClusterRole does not grant {verb} on {resource} ({group:?})"
        );
    }

    let binding: ClusterRoleBinding = find("ClusterRoleBinding", NAME);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, NAME);
    let subjects = binding.subjects.unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && s.name == NAME
            && s.namespace.as_deref() == Some(NAMESPACE)),
        "the binding names the windlass ServiceAccount in kube-system: {subjects:?}"
    );
    let sa: ServiceAccount = find("ServiceAccount", NAME);
    assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
}

/// `$(VAR)` as the kubelet expands it, from the container's own env.
fn expand(arg: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = arg.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("$({name})"), value);
    }
    assert!(
        !out.contains("$("),
        "{arg:?} names a variable the test does not set"
    );
    out
}

#[test]
fn windlass_accepts_the_container_arguments() {
    let agent = agent_container(&daemonset_pod());
    let command = agent.command.clone().unwrap_or_default();
    assert_eq!(command, ["/usr/local/bin/windlass"], "the image's binary");
    let vars = BTreeMap::from([("NODE_NAME", "wl-deploy-test"), ("NODE_IP", "192.0.2.10")]);
    let mut args: Vec<String> = agent
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|a| expand(a, &vars))
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("agent"));
    for flag in ["--kubeconfig", "--server", "--token", "--data-dir"] {
        assert!(
            !args.iter().any(|a| a == flag),
            "{flag}: the DaemonSet uses in-cluster credentials and the default data dir"
        );
    }
    // Stop the agent at its first real step: a kubeconfig that does not exist. Had clap refused
    // a flag, the error would name the flag instead.
    let data = tempfile::tempdir().expect("tempdir");
    let missing = data.path().join("nonexistent.kubeconfig");
    args.extend([
        "--kubeconfig".to_string(),
        missing.display().to_string(),
        "--data-dir".to_string(),
        data.path().join("state").display().to_string(),
    ]);
    let bin = windlass_tests::prereq::workspace_binary("windlass", "WINDLASS_BIN");
    let mut child = Command::new(&bin)
        .args(&args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("windlass agent {args:?} did not stop at the missing kubeconfig");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "windlass agent {args:?} succeeded?");
    for clap_error in ["unexpected argument", "invalid value", "Usage:", "required"] {
        assert!(
            !stderr.contains(clap_error),
            "windlass agent refuses the DaemonSet's arguments {args:?}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("nonexistent.kubeconfig"),
        "windlass agent {args:?} should have stopped at the missing kubeconfig:\n{stderr}"
    );
}
