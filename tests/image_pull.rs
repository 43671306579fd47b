//! `windlass image pull` against a real registry: Debian's `docker-registry` (the CNCF
//! distribution registry) on a free loopback port, plain HTTP, storage in a tempdir. The harness
//! writes a busybox archive, `skopeo` pushes it, and the real `windlass` binary pulls it into a
//! store in a tempdir: listed, unpacked, with the pushed config digest as its ID; a second pull
//! fetches and unpacks nothing again; a missing tag and an unreachable registry fail with a message
//! that says so and leave the store usable. Then the kubelet pulls: a pod with
//! `imagePullPolicy: Always` on an agent inside a node namespace, which reaches the registry on the
//! host's loopback through the harness's loopback forwarder (so the reference is the same
//! `127.0.0.1:<port>/...` inside and out).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use windlass_tests::agent::{LoopbackForwarder, TestAgent};
use windlass_tests::apiserver::{Backend, TestServer, windlass_bin};
use windlass_tests::oci_image::{self, Image};
use windlass_tests::prereq::{self, require_tool};
use windlass_tests::topology::Topology;
use windlass_tests::wait::eventually;

/// A `docker-registry` on 127.0.0.1:<free port>, killed (and its storage removed) on drop.
struct Registry {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

impl Registry {
    fn start() -> Registry {
        let binary = require_tool("docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("create registry storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("create log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!(
                    "docker-registry exited at start ({status}): {}",
                    registry.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr} within 30 s: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:<port>`.
    fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    command
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

/// `skopeo copy` of an OCI archive into the registry; returns the config digest of the manifest
/// the registry then serves.
fn push(registry: &Registry, archive: &Path, repository_tag: &str) -> String {
    let skopeo = require_tool("skopeo");
    let dest = format!("docker://{}/{repository_tag}", registry.host());
    let out = run(Command::new(&skopeo)
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(&dest));
    assert!(
        out.status.success(),
        "skopeo copy to {dest} failed: {}{}\nregistry log: {}",
        text(&out.stdout),
        text(&out.stderr),
        registry.log()
    );
    let out = run(Command::new(&skopeo)
        .args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
        ])
        .arg(&dest));
    assert!(
        out.status.success(),
        "skopeo inspect {dest} failed: {}",
        text(&out.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the pushed manifest is JSON");
    manifest["config"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("the pushed manifest has a config digest: {manifest}"))
        .to_string()
}

fn windlass_image(args: &[&str], data_dir: &Path) -> Output {
    run(Command::new(windlass_bin())
        .arg("image")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir))
}

fn pull(data_dir: &Path, reference: &str) -> Output {
    windlass_image(&["pull", reference], data_dir)
}

fn ls(data_dir: &Path) -> String {
    let out = windlass_image(&["ls"], data_dir);
    assert!(
        out.status.success(),
        "windlass image ls failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Inode and mtime of every blob and layer directory of the store.
fn store_files(data_dir: &Path) -> Vec<(PathBuf, u64, i64, i64)> {
    let mut files = Vec::new();
    for dir in ["images/blobs/sha256", "images/layers"] {
        for entry in std::fs::read_dir(data_dir.join(dir)).expect("read store dir") {
            let path = entry.expect("dir entry").path();
            let meta = std::fs::metadata(&path).expect("stat");
            files.push((path, meta.ino(), meta.mtime(), meta.mtime_nsec()));
        }
    }
    files.sort();
    files
}

fn tmp_is_empty(data_dir: &Path) -> bool {
    std::fs::read_dir(data_dir.join("images/tmp"))
        .expect("read tmp")
        .next()
        .is_none()
}

#[test]
fn an_image_is_pulled_from_a_registry_and_a_missing_one_fails_clearly() {
    require_tool("docker-registry");
    require_tool("skopeo");
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let archive = dir.path().join("busybox.tar");
    let busybox = oci_image::require_static_busybox();
    let written = Image::from_reference("windlass.local/pull-test:v1")
        .expect("reference")
        .entries(oci_image::busybox_rootfs(&busybox, &["sh", "ls", "cat"]))
        .cmd(&["sh"])
        .write_archive(&archive)
        .expect("write archive");
    let config_digest = push(&registry, &archive, "test/busybox:1.0");
    assert_eq!(
        config_digest, written.config_digest,
        "skopeo keeps the config as written"
    );

    let reference = format!("{}/test/busybox:1.0", registry.host());
    let out = pull(&data_dir, &reference);
    assert!(
        out.status.success(),
        "windlass image pull {reference} failed: {}\nregistry log: {}",
        text(&out.stderr),
        registry.log()
    );
    assert!(
        text(&out.stdout).contains(&format!("pulled {reference} ({config_digest})")),
        "{}",
        text(&out.stdout)
    );

    let listing = ls(&data_dir);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "one header and one image: {listing}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], reference, "{listing}");
    assert!(
        config_digest[7..].starts_with(row[1]),
        "the ID column {} is a prefix of the pushed config digest {config_digest}",
        row[1]
    );
    let layer = data_dir
        .join("images/layers")
        .join(&written.layer_digest[7..]);
    assert!(
        layer.join("bin/busybox").is_file(),
        "{} is unpacked",
        layer.display()
    );
    assert!(tmp_is_empty(&data_dir));

    // Again: nothing is fetched into place or unpacked a second time.
    let before = store_files(&data_dir);
    let out = pull(&data_dir, &reference);
    assert!(
        out.status.success(),
        "second pull failed: {}",
        text(&out.stderr)
    );
    assert_eq!(
        store_files(&data_dir),
        before,
        "the second pull reuses every blob and layer"
    );
    assert_eq!(ls(&data_dir), listing);

    // A tag the registry does not have: the registry's message, nothing recorded.
    let missing = format!("{}/test/busybox:nope", registry.host());
    let out = pull(&data_dir, &missing);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "pulling {missing} succeeded");
    assert!(
        stderr.contains(&missing) && stderr.contains("MANIFEST_UNKNOWN"),
        "the error names the image and carries the registry's reason: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A registry that is not there.
    let nowhere = format!("127.0.0.1:{}/test/busybox:1.0", free_port());
    let out = pull(&data_dir, &nowhere);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "pulling {nowhere} succeeded");
    assert!(
        stderr.contains("unreachable"),
        "the error says the registry is unreachable: {stderr}"
    );

    // The store is as it was, and still pulls.
    assert_eq!(ls(&data_dir), listing);
    assert!(tmp_is_empty(&data_dir));
    assert_eq!(store_files(&data_dir), before);
    let out = pull(&data_dir, &reference);
    assert!(
        out.status.success(),
        "pull after failures failed: {}",
        text(&out.stderr)
    );
}

#[test]
fn the_kubelet_pulls_a_pod_image_with_pull_policy_always() {
    prereq::require_root();
    require_tool("docker-registry");
    require_tool("skopeo");
    let patience = Duration::from_secs(60);
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    let topology = Topology::builder().nodes(1).build().expect("topology");
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("busybox.tar");
    let busybox = oci_image::require_static_busybox();
    Image::from_reference("windlass.local/pull-test:v1")
        .expect("reference")
        .entries(oci_image::busybox_rootfs(&busybox, &["sh", "sleep"]))
        .cmd(&["sh"])
        .write_archive(&archive)
        .expect("write archive");
    let config_digest = push(&registry, &archive, "test/busybox:1.0");
    // The registry's port on the node's loopback too.
    let _forwarder =
        LoopbackForwarder::start(topology.node(0), registry.addr.port()).expect("forwarder");
    let agent = TestAgent::start(&server, topology.node(0), 10.0).expect("start agent");
    let kubectl = prereq::kubectls().remove(0);
    let node = agent.node_name().to_string();
    eventually("the node to be Ready", patience, || {
        let out = server.kubectl(&kubectl, &["get", "node", &node, "-o", "json"]);
        let node: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    });

    let reference = format!("{}/test/busybox:1.0", registry.host());
    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pulled\n  namespace: default\n\
             spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    \
             image: {reference}\n    imagePullPolicy: Always\n    command: [\"sleep\", \"3600\"]\n"
        ),
    )
    .expect("write pod manifest");
    server.kubectl_ok(&kubectl, &["create", "-f", &manifest.display().to_string()]);
    let pod = eventually("pod pulled to run", patience, || {
        let out = server.kubectl(&kubectl, &["get", "pod", "pulled", "-o", "json"]);
        let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (pod["status"]["phase"] == "Running").then_some(pod)
    });
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["ready"], true, "{pod:#}\n{}", agent.log());

    // The image is in the agent's store under the pod's reference, with the pushed config.
    let listing = ls(agent.data_dir());
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&reference) && l.contains(&config_digest[7..20])),
        "{listing}"
    );
    let events = server.kubectl_ok(
        &kubectl,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=pulled",
            "-o",
            "json",
        ],
    );
    assert!(
        events.contains("Pulling"),
        "a Pulling event was recorded: {events}"
    );
    server.kubectl_ok(&kubectl, &["delete", "pod", "pulled", "--wait=true"]);
}
