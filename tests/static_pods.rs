//! Static pods: manifests in `windlass agent --manifest-dir` run with no API server at all, show
//! up as mirror pods once the server is there, survive the mirror's deletion, and stop when
//! their file goes.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use windlass_tests::agent::{AgentOptions, TestAgent};
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::oci_image::{self, Image};
use windlass_tests::topology::Topology;
use windlass_tests::wait::eventually;
use windlass_tests::{prefix, prereq};

const PATIENCE: Duration = Duration::from_secs(60);

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: windlass.local/busybox:latest
    command: ["sh", "-c", "echo static-pod-started; exec sleep 3600"]
"#;

fn get(server: &TestServer, kubectl: &Path, name: &str) -> Option<Value> {
    let out = server.kubectl(kubectl, &["get", "pod", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// The container's pid, from the one live shim state dir the agent has.
fn running_pid(agent: &TestAgent) -> Option<u32> {
    let containers = std::fs::read_dir(agent.data_dir().join("containers")).ok()?;
    containers
        .filter_map(Result::ok)
        .filter(|c| !c.path().join("state/exit.json").exists())
        .filter_map(|c| std::fs::read_to_string(c.path().join("state/container.pid")).ok())
        .filter_map(|p| p.trim().parse::<u32>().ok())
        .find(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

#[test]
fn static_pods_run_without_an_api_server_and_are_mirrored_once_it_answers() {
    prereq::require_root();
    let mut server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    // The API server is down when the agent starts.
    server.kill9();
    let topology = Topology::builder().nodes(1).build().expect("topology");
    let manifests = tempfile::Builder::new()
        .prefix(&format!("{}-manifests", prefix::unique()))
        .tempdir()
        .expect("tempdir");
    let agent = TestAgent::start_with(
        &server,
        topology.node(0),
        AgentOptions {
            extra_args: vec![
                "--manifest-dir".into(),
                manifests.path().display().to_string(),
            ],
            ..Default::default()
        },
    )
    .expect("start the agent");
    let archive = manifests.path().join("busybox.tar.img");
    Image::from_reference("windlass.local/busybox:latest")
        .expect("reference")
        .entries(oci_image::busybox_rootfs(
            &oci_image::require_static_busybox(),
            &["sh", "sleep", "echo"],
        ))
        .write_archive(&archive)
        .expect("archive");
    agent.import_image(&archive).expect("import");
    std::fs::write(manifests.path().join("web.yaml"), MANIFEST).expect("write the manifest");

    // It runs with no API server: the container is up and has written its log.
    let pid = eventually("the static pod's container to run", PATIENCE, || {
        running_pid(&agent)
    });
    let node = agent.node_name().to_string();
    let name = format!("web-{node}");

    // The server comes up: the node registers and the mirror pod appears with the status.
    server.restart().expect("start the server again");
    let kubectl = prereq::kubectls().remove(0);
    let mirror = eventually("the mirror pod to show the pod Running", PATIENCE, || {
        let pod = get(&server, &kubectl, &name)?;
        (pod["status"]["phase"] == "Running").then_some(pod)
    });
    let annotations = &mirror["metadata"]["annotations"];
    assert!(
        annotations["kubernetes.io/config.mirror"].is_string(),
        "{mirror:#}"
    );
    assert_eq!(annotations["kubernetes.io/config.source"], "file");
    assert_eq!(mirror["spec"]["nodeName"], node.as_str());
    assert_eq!(mirror["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert_eq!(mirror["status"]["containerStatuses"][0]["ready"], true);
    let first_uid = mirror["metadata"]["uid"].as_str().expect("uid").to_string();

    // Deleting the mirror does not stop the pod; the kubelet makes a new mirror.
    server.kubectl_ok(&kubectl, &["delete", "pod", &name, "--wait=false"]);
    eventually("a new mirror pod", PATIENCE, || {
        let pod = get(&server, &kubectl, &name)?;
        (pod["metadata"]["uid"].as_str() != Some(first_uid.as_str())
            && pod["status"]["phase"] == "Running")
            .then_some(())
    });
    assert_eq!(
        running_pid(&agent),
        Some(pid),
        "the container was restarted"
    );

    // Removing the manifest stops the pod and removes the mirror.
    std::fs::remove_file(manifests.path().join("web.yaml")).expect("remove the manifest");
    eventually("the mirror pod to go", PATIENCE, || {
        get(&server, &kubectl, &name).is_none().then_some(())
    });
    eventually("the container to stop", PATIENCE, || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
}
