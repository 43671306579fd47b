//! `windlass agent --server URL --token T`: a node joins with the token from the server's
//! `<data-dir>/node-token`, checks the CA it downloads against the token, and then runs with its
//! own `system:node:<name>` credentials (NodeRestriction applies), not the admin's.

use std::time::Duration;

use serde_json::Value;
use windlass_tests::agent::{AgentOptions, TestAgent};
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::oci_image::{self, Image};
use windlass_tests::topology::Topology;
use windlass_tests::wait::eventually;
use windlass_tests::{prefix, prereq};

const PATIENCE: Duration = Duration::from_secs(60);

fn get(server: &TestServer, kubectl: &std::path::Path, args: &[&str]) -> Option<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    let out = server.kubectl(kubectl, &all);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[test]
fn a_node_joins_with_the_token_and_runs_pods_with_its_own_credentials() {
    prereq::require_root();
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    let token = std::fs::read_to_string(server.data_dir().join("node-token"))
        .expect("the server writes <data-dir>/node-token");
    assert!(token.starts_with("K10"), "{token}");
    let topology = Topology::builder().nodes(1).build().expect("topology");
    let agent = TestAgent::start_with(
        &server,
        topology.node(0),
        AgentOptions {
            join_token: Some(token.trim().to_string()),
            ..Default::default()
        },
    )
    .expect("start the agent");
    let kubectl = prereq::kubectls().remove(0);
    let node = agent.node_name().to_string();
    eventually("the joined node to be Ready", PATIENCE, || {
        let node = get(&server, &kubectl, &["node", &node])?;
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    });
    let issued = std::fs::read_to_string(agent.data_dir().join("node.kubeconfig"))
        .expect("the node kubeconfig");
    assert!(
        issued.contains(&format!("system:node:{node}")),
        "the node runs as itself: {issued}"
    );

    // It runs a pod with those credentials: status writes pass NodeRestriction.
    let images = tempfile::Builder::new()
        .prefix(&format!("{}-images", prefix::unique()))
        .tempdir()
        .expect("tempdir");
    let archive = images.path().join("busybox.tar");
    Image::from_reference("windlass.local/busybox:latest")
        .expect("reference")
        .entries(oci_image::busybox_rootfs(
            &oci_image::require_static_busybox(),
            &["sh", "sleep"],
        ))
        .write_archive(&archive)
        .expect("archive");
    agent.import_image(&archive).expect("import");
    let manifest = images.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: joined}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: main, image: windlass.local/busybox:latest, command: [sleep, '3600']}\n",
    )
    .expect("write manifest");
    server.kubectl_ok(&kubectl, &["create", "-f", &manifest.display().to_string()]);
    eventually("the pod to run on the joined node", PATIENCE, || {
        let pod = get(&server, &kubectl, &["pod", "joined"])?;
        (pod["status"]["phase"] == "Running" && pod["spec"]["nodeName"] == node.as_str())
            .then_some(())
    });
    // The kubelet tells the story in events, written with the node's own credentials.
    eventually("Created and Started events for the pod", PATIENCE, || {
        let events = get(&server, &kubectl, &["events"])?;
        let reasons: Vec<&str> = events["items"]
            .as_array()?
            .iter()
            .filter(|e| e["involvedObject"]["name"] == "joined")
            .filter(|e| e["source"]["component"] == "kubelet")
            .filter_map(|e| e["reason"].as_str())
            .collect();
        (reasons.contains(&"Created") && reasons.contains(&"Started")).then_some(())
    });
    server.kubectl_ok(&kubectl, &["delete", "pod", "joined", "--wait=false"]);
    eventually("the pod to be gone", PATIENCE, || {
        get(&server, &kubectl, &["pod", "joined"])
            .is_none()
            .then_some(())
    });
}

#[test]
fn a_token_whose_ca_hash_does_not_match_is_refused() {
    prereq::require_root();
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    let token = std::fs::read_to_string(server.data_dir().join("node-token")).expect("token");
    let (_, secret) = token.trim().split_once("::").expect("K10<hash>::<secret>");
    let forged = format!("K10{}::{secret}", "0".repeat(64));
    let topology = Topology::builder().nodes(1).build().expect("topology");
    let mut agent = TestAgent::start_with(
        &server,
        topology.node(0),
        AgentOptions {
            join_token: Some(forged),
            ..Default::default()
        },
    )
    .expect("start the agent");
    let log = eventually("the agent to exit", PATIENCE, || {
        agent.exited().then(|| agent.log())
    });
    assert!(
        log.contains("does not match the join token"),
        "the agent names the CA mismatch: {log}"
    );
    assert!(!agent.data_dir().join("node.kubeconfig").exists());
}
