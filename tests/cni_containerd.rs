//! Acceptance of the CNI plugin under a real runtime: Debian's containerd 1.6 (its libcni speaks
//! CNI up to 1.0.0, so the conflist says 1.0.0), its CRI plugin configured to run `windlass-cni`,
//! starts a pod sandbox from a pause image built here from busybox-static; the sandbox's network
//! namespace has the address and default route the plugin assigned, the IPAM data dir records the
//! sandbox, and stopping and removing the sandbox releases both. containerd runs inside a node
//! namespace of a one-node topology, so nothing touches the host's network.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::PodSandboxState;
use windlass_cni::netlink;
use windlass_tests::containerd::Containerd;
use windlass_tests::topology::Topology;
use windlass_tests::{NetNs, cni, oci_image, prereq};

const SUBNET: &str = "10.244.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const NETWORK: &str = "windlass";

/// Link `link`'s addresses and the routes inside `ns`.
fn link_view(ns: &NetNs, link: &str) -> netlink::Ipv4View {
    cni::ipv4_view(ns, link).unwrap_or_else(|e| panic!("read {link} in {}: {e}", ns.name()))
}

/// containerd in node 0 of `topo`, with `windlass-cni` as its only network (IPAM under `ipam`)
/// and the pause image imported.
fn containerd_on_windlass_cni(topo: &Topology, ipam: &Path) -> Containerd {
    let plugin = cni::windlass_cni_bin();
    let busybox = oci_image::require_static_busybox();
    let conflist = cni::windlass_conflist("1.0.0", SUBNET, ipam);
    let containerd = Containerd::builder(&topo.node(0).ns, topo.prefix())
        .cni_plugin(&plugin)
        .cni_conflist("10-windlass.conflist", &conflist.to_string())
        .start()
        .expect("start containerd in the node namespace");
    let pause = oci_image::pause_image(&busybox).expect("pause image");
    containerd.import(&pause).expect("import the pause image");
    containerd
}

fn ipam_dir(topo: &Topology) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{}-ipam", topo.prefix()))
        .tempdir()
        .expect("IPAM data dir")
}

#[test]
fn containerd_runs_a_pod_sandbox_on_windlass_cni() {
    prereq::require_root();
    let topo = Topology::builder()
        .nodes(1)
        .build()
        .expect("build topology");
    let node = topo.node(0);
    let ipam = ipam_dir(&topo);
    let containerd = containerd_on_windlass_cni(&topo, ipam.path());
    let version = containerd.version().expect("CRI Version");
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");

    let uid = format!("{}-uid", topo.prefix());
    let config = containerd.sandbox_config("default", "web", &uid);
    let id = containerd
        .run_pod_sandbox(config)
        .expect("RunPodSandbox through windlass-cni");

    // The runtime's view: a ready sandbox with an address from the node's pod CIDR.
    let response = containerd
        .pod_sandbox_status(&id)
        .expect("PodSandboxStatus");
    let status = response.status.as_ref().expect("a status");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    let ip: Ipv4Addr = status
        .network
        .as_ref()
        .map(|n| n.ip.as_str())
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("sandbox IP in {:?}: {e}", status.network));
    let [a, b, c, d] = ip.octets();
    assert_eq!(
        (a, b, c),
        (10, 244, 0),
        "sandbox IP {ip} is outside {SUBNET}"
    );
    assert!(d > 1 && d < 255, "sandbox IP {ip} is not a host address");

    // The pause process runs in the fixture's cgroup in every hierarchy, nowhere else.
    let info: serde_json::Value =
        serde_json::from_str(response.info.get("info").expect("verbose info")).expect("info JSON");
    let pid = info["pid"].as_u64().expect("sandbox pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("pause's cgroups");
    for line in cgroups.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or_default();
        assert!(
            path.starts_with(&format!("{}/", containerd.cgroup_parent())),
            "pause process {pid} is in {line}, outside {}",
            containerd.cgroup_parent()
        );
    }

    // The sandbox's namespace: eth0 holds that address /24, the default route is the bridge.
    let netns_path = containerd.sandbox_netns(&id).expect("sandbox netns");
    let pod_ns = NetNs::open(&netns_path).expect("open the sandbox netns");
    let eth0 = link_view(&pod_ns, "eth0");
    assert!(
        eth0.addresses.contains(&(ip, 24)),
        "eth0 has {:?}, expected {ip}/24",
        eth0.addresses
    );
    assert_eq!(
        eth0.default_route(),
        Some((Some(GATEWAY), true)),
        "default route in the sandbox (gateway, via eth0)"
    );

    // The plugin ran in the node namespace, never in the host's: the bridge is there.
    let bridge = link_view(&node.ns, "wl0");
    assert!(
        bridge.addresses.contains(&(GATEWAY, 24)),
        "wl0 in the node has {:?}",
        bridge.addresses
    );
    assert!(
        !Path::new("/sys/class/net/wl0").exists(),
        "a wl0 bridge appeared in the host namespace"
    );

    // Traffic inside our namespaces: the node reaches a listener in the sandbox.
    let listener = pod_ns
        .run(|| TcpListener::bind((ip, 0)))
        .expect("enter sandbox netns")
        .expect("listen in the sandbox");
    let port = listener.local_addr().expect("listener address").port();
    node.ns
        .run(|| TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(5)))
        .expect("enter node netns")
        .unwrap_or_else(|e| panic!("connect from the node to {ip}:{port}: {e}"));
    listener.accept().expect("accept the node's connection");
    drop(listener);

    // IPAM: one entry per address under <dataDir>/<network>, naming the sandbox.
    let ip_file = ipam.path().join(NETWORK).join(ip.to_string());
    let owner = windlass_cni::ipam::read_allocations(&ipam.path().join(NETWORK))
        .expect("read IPAM entries")
        .into_iter()
        .find(|a| a.ip == ip)
        .map(|a| format!("{}/{}", a.container_id, a.ifname))
        .unwrap_or_else(|| panic!("no IPAM entry {}", ip_file.display()));
    assert!(
        owner.contains(&id),
        "{} holds {owner:?}, not sandbox {id}",
        ip_file.display()
    );

    containerd.stop_pod_sandbox(&id).expect("StopPodSandbox");
    assert!(
        std::fs::symlink_metadata(&ip_file).is_err(),
        "{} still exists after StopPodSandbox (CNI DEL)",
        ip_file.display()
    );
    containerd
        .remove_pod_sandbox(&id)
        .expect("RemovePodSandbox");
    assert!(
        !netns_path.exists(),
        "sandbox netns {} left after RemovePodSandbox",
        netns_path.display()
    );
    assert_eq!(
        containerd.list_pod_sandboxes().expect("ListPodSandbox"),
        Vec::<String>::new()
    );
}

/// Processes whose command line mentions `needle` (the fixture's directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(needle).then(|| format!("{pid}: {text}"))
        })
        .collect()
}

/// The fixture's fallback path: containerd dies (SIGKILL) with a sandbox running and the test
/// then panics; dropping the fixture must still kill the shim and the pause process and remove
/// the cgroups, mounts, netns and directory.
#[test]
fn containerd_fixture_cleans_up_after_a_crash_and_a_panic() {
    prereq::require_root();
    let topo = Topology::builder()
        .nodes(1)
        .build()
        .expect("build topology");
    let ipam = ipam_dir(&topo);
    let mut containerd = containerd_on_windlass_cni(&topo, ipam.path());
    let uid = format!("{}-uid", topo.prefix());
    let id = containerd
        .run_pod_sandbox(containerd.sandbox_config("default", "crash", &uid))
        .expect("RunPodSandbox");
    let netns = containerd.sandbox_netns(&id).expect("sandbox netns");
    let dir = containerd.dir().to_path_buf();
    let cgroup = containerd
        .cgroup_parent()
        .trim_start_matches('/')
        .to_string();
    let needle = dir.display().to_string();
    assert!(
        processes_mentioning(&needle)
            .iter()
            .any(|p| p.contains("containerd-shim")),
        "a shim runs for the sandbox"
    );
    // The shim's socket lives outside the fixture's directory, where containerd 1.6 puts them.
    let address_file = dir
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(&id)
        .join("address");
    let address = std::fs::read_to_string(&address_file).expect("the shim's address file");
    let shim_socket = Path::new(address.trim().trim_start_matches("unix://")).to_path_buf();
    assert!(
        shim_socket.exists(),
        "shim socket {}",
        shim_socket.display()
    );

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        containerd.kill9();
        panic!("test failure while containerd is down and a sandbox runs");
    }));
    assert!(result.is_err(), "the closure panicked");

    assert_eq!(processes_mentioning(&needle), Vec::<String>::new());
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .expect("list cgroup hierarchies")
        .filter_map(|h| Some(h.ok()?.path().join(&cgroup)))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&needle),
        "mounts left under {needle}:\n{mounts}"
    );
    assert!(!netns.exists(), "sandbox netns {} left", netns.display());
    assert!(
        !shim_socket.exists(),
        "shim socket {} left",
        shim_socket.display()
    );
    assert!(!dir.exists(), "{} left", dir.display());
}
