//! Pod networking across nodes (issue 8): `windlass server` in the topology's fabric, one
//! `windlass agent` per node namespace, real pods, real traffic.
//!
//! Every node runs one pod with two servers: busybox `httpd` on 8080 answering its pod name,
//! and `wl-probe peer-serve` on 8081 answering the address the connection came from. Clients
//! run inside a pod's network namespace (found by the pod's IP), so what they send is what the
//! pod sends. The tests check what a user would: a pod reaches a pod on another node by its IP
//! both ways, over direct routes or VXLAN (also between nodes on different L2 segments behind a
//! router); the kernel holds the routes, neighbours and FDB entries the design names; a route
//! deleted by hand comes back; a Node that goes away takes its entries with it; traffic leaving
//! the cluster carries the node's address while pod-to-pod traffic keeps the pod's; an agent
//! killed with SIGKILL and restarted adopts what is there without changing it; and the teardown
//! `windlass reset` uses leaves nothing behind.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use windlass_tests::agent::{AgentOptions, TestAgent};
use windlass_tests::apiserver::TestServer;
use windlass_tests::multinode::{self, OutsideHost};
use windlass_tests::proxy::{self, PROBE_IMAGE, PROBE_IN_IMAGE};
use windlass_tests::topology::Topology;
use windlass_tests::wait::eventually;
use windlass_tests::{NetNs, oci_image, prefix, prereq};

const PATIENCE: Duration = Duration::from_secs(90);
/// busybox httpd in every web pod.
const HTTP_PORT: u16 = 8080;
/// `wl-probe peer-serve` in every web pod and on the outside host.
const PEER_PORT: u16 = 8081;
/// The outside host: on the fabric, outside the cluster CIDR.
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);

struct Cluster {
    // Drop order: the agents (and their pods), the server (inside the fabric), the topology.
    agents: Vec<TestAgent>,
    server: TestServer,
    topology: Topology,
    kubectl: PathBuf,
    files: tempfile::TempDir,
}

/// A web pod as the test sees it.
struct WebPod {
    name: String,
    ip: Ipv4Addr,
    ns: NetNs,
}

impl Cluster {
    /// `nodes` nodes, each with an agent started with `extra_args`, the images imported, every
    /// node Ready with a podCIDR.
    fn start(nodes: usize, extra_args: &[&str]) -> Cluster {
        Self::start_with(nodes, extra_args, None)
    }

    /// Like [`Cluster::start`], with node `routed` moved onto another subnet behind a router
    /// ([`multinode::route_node_via_fabric`]) before its agent starts.
    fn start_with(nodes: usize, extra_args: &[&str], routed: Option<usize>) -> Cluster {
        prereq::require_root();
        for tool in ["ip", "bridge", "iptables", "iptables-restore"] {
            prereq::require_tool(tool);
        }
        proxy::wl_probe_bin();
        oci_image::require_static_busybox();
        let busybox = proxy::test_image("busybox");
        let topology = Topology::builder().nodes(nodes).build().expect("topology");
        let ip = topology.fabric_address().expect("fabric address");
        let server = TestServer::start_in(topology.fabric(), ip).expect("start windlass server");
        let files = tempfile::Builder::new()
            .prefix(&format!("{}-multinode", prefix::unique()))
            .tempdir()
            .expect("tempdir");
        let probe_archive = files.path().join("wl-probe.tar");
        proxy::probe_image(&probe_archive).expect("write the wl-probe image");
        if let Some(i) = routed {
            multinode::route_node_via_fabric(&topology, i).expect("route a node");
        }
        let mut agents = Vec::new();
        for node in topology.nodes() {
            let options = AgentOptions {
                backoff_base_seconds: 1.0,
                extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            };
            let agent = TestAgent::start_with(&server, node, options).expect("start agent");
            for archive in [&busybox, &probe_archive] {
                agent
                    .import_image(archive)
                    .unwrap_or_else(|e| panic!("import {}: {e}", archive.display()));
            }
            agents.push(agent);
        }
        let cluster = Cluster {
            agents,
            server,
            topology,
            kubectl: prereq::kubectls().remove(0),
            files,
        };
        for agent in &cluster.agents {
            let name = agent.node_name().to_string();
            eventually(
                &format!("node {name} to be Ready with a podCIDR"),
                PATIENCE,
                || {
                    let node = cluster.get("node", &name)?;
                    let ready = node["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True");
                    (ready && node["spec"]["podCIDR"].is_string()).then_some(())
                },
            );
        }
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

    /// Node `i`'s name.
    fn node_name(&self, i: usize) -> String {
        self.agents[i].node_name().to_string()
    }

    /// Node `i`'s podCIDR (`10.244.x.0/24`).
    fn pod_cidr(&self, i: usize) -> String {
        let node = self.get("node", &self.node_name(i)).expect("node");
        node["spec"]["podCIDR"]
            .as_str()
            .expect("podCIDR")
            .to_string()
    }

    /// Node `i`'s namespace.
    fn node_ns(&self, i: usize) -> &NetNs {
        &self.topology.node(i).ns
    }

    /// `ip args...` in node `i`.
    fn ip(&self, i: usize, args: &[&str]) -> String {
        multinode::tool_in(self.node_ns(i), "ip", args)
    }

    /// Starts web pod `name` on node `i` and waits for its IP and network namespace.
    fn web_pod(&self, name: &str, i: usize) -> WebPod {
        let node = self.node_name(i);
        self.create(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: windlass.local/busybox:latest
    command: ["sh", "-c", "mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p {HTTP_PORT} -h /www"]
  - name: peer
    image: {PROBE_IMAGE}
    command: ["{PROBE_IN_IMAGE}", "peer-serve", "{PEER_PORT}"]
"#
        ));
        let ip: Ipv4Addr = eventually(&format!("pod {name} to run with an IP"), PATIENCE, || {
            let pod = self.get("pod", name)?;
            (pod["status"]["phase"] == "Running")
                .then(|| pod["status"]["podIP"].as_str()?.parse().ok())?
        });
        let data_dir = self.agents[i].data_dir().to_path_buf();
        let ns = eventually(&format!("pod {name}'s network namespace"), PATIENCE, || {
            multinode::pod_netns(&data_dir, ip)
        });
        WebPod {
            name: name.to_string(),
            ip,
            ns,
        }
    }

    /// Fails with the agents' logs.
    fn fail(&self, message: &str) -> ! {
        for agent in &self.agents {
            eprintln!("--- agent {} log ---\n{}", agent.node_name(), agent.log());
        }
        panic!("{message}");
    }
}

/// Calls `check` every 250 ms until it returns `Ok`, for at most [`PATIENCE`]; then fails with
/// `what` and the last `Err`.
fn until<T>(cluster: &Cluster, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match check() {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => {
                cluster.fail(&format!("timed out waiting for {what}; last: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `wget -qO- http://<to>:8080` from inside `from`: the body (the server pod's name).
fn http_get(from: &WebPod, to: Ipv4Addr) -> Result<String, String> {
    let busybox = oci_image::require_static_busybox();
    let busybox = busybox.to_string_lossy();
    let url = format!("http://{to}:{HTTP_PORT}/");
    // coreutils' timeout: busybox wget's own -T crashes some busybox-static builds.
    let timeout = prereq::require_tool("timeout");
    let (ok, out) = multinode::run_in(&from.ns, &timeout, &["5", &busybox, "wget", "-qO-", &url]);
    if ok {
        Ok(out.trim().to_string())
    } else {
        Err(format!("wget {url} from {}: {out}", from.name))
    }
}

/// `wl-probe tcp-get <to>:8081` from inside `from`: the source address the server saw.
fn peer_seen(from: &WebPod, to: Ipv4Addr) -> Result<String, String> {
    let addr = format!("{to}:{PEER_PORT}");
    let (ok, out) = multinode::run_in(&from.ns, &proxy::wl_probe_bin(), &["tcp-get", &addr]);
    match out.trim().split_once(' ') {
        Some((_, seen)) if ok => Ok(seen.to_string()),
        _ => Err(format!("wl-probe tcp-get {addr} from {}: {out}", from.name)),
    }
}

/// Two pods on two nodes reach each other by pod IP, both ways.
fn assert_pods_talk(cluster: &Cluster, a: &WebPod, b: &WebPod) {
    for (from, to) in [(a, b), (b, a)] {
        let body = until(
            cluster,
            &format!("{} to fetch {}'s page", from.name, to.name),
            || http_get(from, to.ip),
        );
        assert_eq!(body, to.name, "{} fetched {}", from.name, to.ip);
    }
}

/// The lines of `ip route show proto 87` (windlass's routes; `ip` leaves out the `proto` it
/// filters on) in node `i`.
fn owned_routes(cluster: &Cluster, i: usize) -> String {
    cluster.ip(i, &["-4", "route", "show", "proto", "87"])
}

#[test]
fn direct_routes_connect_pods_on_two_nodes_and_go_with_a_deleted_node() {
    let mut cluster = Cluster::start(2, &[]);
    let (cidr0, cidr1) = (cluster.pod_cidr(0), cluster.pod_cidr(1));
    let web0 = cluster.web_pod("web-0", 0);
    let web1 = cluster.web_pod("web-1", 1);
    let net1: Ipv4Addr = network(&cidr1).parse().expect("podCIDR address");
    assert_eq!(
        web1.ip.octets()[..3],
        net1.octets()[..3],
        "pod {} is not in node 1's podCIDR {cidr1}",
        web1.ip
    );

    // Each node routes the other's podCIDR via the other's address, on its uplink.
    for (i, peer_cidr, peer_ip) in [(0, &cidr1, "192.0.2.2"), (1, &cidr0, "192.0.2.1")] {
        let uplink = cluster.topology.node(i).uplink.clone();
        let want = format!("{peer_cidr} via {peer_ip} dev {uplink} ");
        until(&cluster, &format!("node {i}'s route: {want}"), || {
            let routes = owned_routes(&cluster, i);
            if routes.contains(&want) {
                Ok(())
            } else {
                Err(routes)
            }
        });
    }
    assert_pods_talk(&cluster, &web0, &web1);

    // A route removed behind the agent's back comes back at the next resync (30 s).
    cluster.ip(0, &["route", "del", &cidr1]);
    until(
        &cluster,
        "node 0's route to node 1's pods to come back",
        || {
            let routes = owned_routes(&cluster, 0);
            if routes.contains(&cidr1) {
                Ok(())
            } else {
                Err(routes)
            }
        },
    );
    assert_pods_talk(&cluster, &web0, &web1);

    // Node 1 goes away: its agent stops and its Node is deleted; node 0 drops the route.
    cluster.agents[1].kill9();
    let node1 = cluster.node_name(1);
    cluster
        .server
        .kubectl_ok(&cluster.kubectl, &["delete", "node", &node1]);
    until(&cluster, "node 0's route to node 1's pods to go", || {
        let routes = owned_routes(&cluster, 0);
        if routes.contains(&cidr1) {
            Err(routes)
        } else {
            Ok(())
        }
    });
    assert!(
        http_get(&web0, web1.ip).is_err(),
        "pod web-0 still reaches web-1 on a deleted node"
    );
}

/// The VXLAN MAC node `i` published.
fn published_mac(cluster: &Cluster, i: usize) -> String {
    let name = cluster.node_name(i);
    eventually(&format!("node {name}'s VXLAN MAC"), PATIENCE, || {
        let node = cluster.get("node", &name)?;
        node["metadata"]["annotations"]["windlass.dev/vxlan-mac"]
            .as_str()
            .map(str::to_string)
    })
}

/// The network part of `cidr` (`10.244.1.0/24` → `10.244.1.0`).
fn network(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

#[test]
fn vxlan_tunnels_pod_traffic_between_two_nodes_and_teardown_removes_it() {
    let mut cluster = Cluster::start(2, &["--overlay", "vxlan"]);
    let cidrs = [cluster.pod_cidr(0), cluster.pod_cidr(1)];
    let macs = [published_mac(&cluster, 0), published_mac(&cluster, 1)];
    let web0 = cluster.web_pod("web-0", 0);
    let web1 = cluster.web_pod("web-1", 1);

    for (i, peer) in [(0usize, 1usize), (1, 0)] {
        let underlay = cluster.topology.node(i).underlay_ip;
        let peer_underlay = cluster.topology.node(peer).underlay_ip;
        // The device: VNI 1, port 8472, local = node IP, no learning, MTU uplink - 50, the
        // podCIDR's network address, and the MAC the Node shows.
        let link = cluster.ip(i, &["-d", "link", "show", "wl.vxlan"]);
        for want in [
            "vxlan id 1 ".to_string(),
            format!("local {underlay} "),
            "dstport 8472 ".to_string(),
            "nolearning".to_string(),
            "mtu 1450 ".to_string(),
            format!("link/ether {} ", macs[i]),
        ] {
            assert!(
                link.contains(&want),
                "node {i}'s wl.vxlan lacks {want:?}:\n{link}"
            );
        }
        let addr = cluster.ip(i, &["-4", "-o", "addr", "show", "dev", "wl.vxlan"]);
        assert!(
            addr.contains(&format!("inet {}/32", network(&cidrs[i]))),
            "node {i}'s wl.vxlan address: {addr}"
        );
        // Per peer: route, permanent neighbour, FDB entry.
        let route = format!(
            "{} via {} dev wl.vxlan onlink",
            cidrs[peer],
            network(&cidrs[peer])
        );
        let neigh = format!("{} lladdr {} PERMANENT", network(&cidrs[peer]), macs[peer]);
        let fdb = format!("{} dst {peer_underlay} self permanent", macs[peer]);
        until(
            &cluster,
            &format!("node {i}'s route, neighbour and FDB entry"),
            || {
                let routes = owned_routes(&cluster, i);
                let neighbours = cluster.ip(i, &["-4", "neigh", "show", "dev", "wl.vxlan"]);
                let entries = multinode::tool_in(
                    cluster.node_ns(i),
                    "bridge",
                    &["fdb", "show", "dev", "wl.vxlan"],
                );
                if routes.contains(&route) && neighbours.contains(&neigh) && entries.contains(&fdb)
                {
                    Ok(())
                } else {
                    Err(format!(
                        "routes:\n{routes}neighbours:\n{neighbours}fdb:\n{entries}"
                    ))
                }
            },
        );
    }
    // The kernel sends pod traffic into the tunnel, and it arrives.
    let via = cluster.ip(0, &["route", "get", &web1.ip.to_string()]);
    assert!(
        via.contains("dev wl.vxlan"),
        "node 0 routes {} {via}",
        web1.ip
    );
    assert_pods_talk(&cluster, &web0, &web1);

    // Node 1 goes away: node 0 drops its route, neighbour and FDB entry.
    cluster.agents[1].kill9();
    let node1 = cluster.node_name(1);
    cluster
        .server
        .kubectl_ok(&cluster.kubectl, &["delete", "node", &node1]);
    until(&cluster, "node 0's entries for node 1 to go", || {
        let routes = owned_routes(&cluster, 0);
        let neighbours = cluster.ip(0, &["-4", "neigh", "show", "dev", "wl.vxlan"]);
        let entries = multinode::tool_in(
            cluster.node_ns(0),
            "bridge",
            &["fdb", "show", "dev", "wl.vxlan"],
        );
        let left = format!("{routes}{neighbours}{entries}");
        if left.contains(&cidrs[1]) || left.contains(&macs[1]) {
            Err(left)
        } else {
            Ok(())
        }
    });

    // `windlass reset`'s network step, twice: everything windlass made in node 0 goes.
    cluster.agents[0].kill9();
    for round in 0..2 {
        let removed = cluster
            .node_ns(0)
            .run(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(windlass::node::network::teardown())
            })
            .expect("enter node 0")
            .unwrap_or_else(|e| panic!("teardown round {round}: {e}"));
        assert_eq!(
            removed.vxlan_device,
            round == 0,
            "round {round}: {removed:?}"
        );
    }
    let links = cluster.ip(0, &["-o", "link"]);
    assert!(!links.contains("wl.vxlan"), "wl.vxlan is left: {links}");
    assert_eq!(owned_routes(&cluster, 0), "", "windlass routes are left");
    let iptables = prereq::require_tool("iptables");
    let (_, nat) = multinode::run_in(cluster.node_ns(0), &iptables, &["-t", "nat", "-S"]);
    assert!(
        !nat.contains("WINDLASS"),
        "masquerade rules are left: {nat}"
    );
}

#[test]
fn traffic_leaving_the_cluster_is_masqueraded_and_pod_to_pod_traffic_is_not() {
    let cluster = Cluster::start(2, &[]);
    let outside =
        OutsideHost::start(&cluster.topology, OUTSIDE_IP, PEER_PORT).expect("outside host");
    let web0 = cluster.web_pod("web-0", 0);
    let web1 = cluster.web_pod("web-1", 1);
    let node0_ip = cluster.topology.node(0).underlay_ip.to_string();

    // Pod → outside: the connection comes from node 0's address.
    let seen = until(&cluster, "web-0 to reach the outside host", || {
        peer_seen(&web0, outside.ip())
    });
    assert_eq!(
        seen, node0_ip,
        "the outside host saw web-0's connection come from {seen}"
    );
    // Pod → pod on another node: the server sees the client pod's own address.
    let seen = until(&cluster, "web-0 to reach web-1", || {
        peer_seen(&web0, web1.ip)
    });
    assert_eq!(
        seen,
        web0.ip.to_string(),
        "web-1 saw web-0's connection come from {seen}"
    );
    let seen = until(&cluster, "web-1 to reach web-0", || {
        peer_seen(&web1, web0.ip)
    });
    assert_eq!(
        seen,
        web1.ip.to_string(),
        "web-0 saw web-1's connection come from {seen}"
    );

    // The rules live in windlass's chain, jumped to once from POSTROUTING.
    let iptables = prereq::require_tool("iptables");
    let (ok, chain) = multinode::run_in(
        cluster.node_ns(0),
        &iptables,
        &["-t", "nat", "-S", "WINDLASS-POSTROUTING"],
    );
    assert!(ok && chain.contains("-j MASQUERADE"), "the chain: {chain}");
    let (_, postrouting) = multinode::run_in(
        cluster.node_ns(0),
        &iptables,
        &["-t", "nat", "-S", "POSTROUTING"],
    );
    assert_eq!(
        postrouting.matches("-j WINDLASS-POSTROUTING").count(),
        1,
        "POSTROUTING: {postrouting}"
    );
}

/// What node 0's kernel holds for the network, to compare across a restart.
fn snapshot(cluster: &Cluster) -> String {
    let link = cluster.ip(0, &["-o", "link", "show", "wl.vxlan"]);
    // The index and MAC say whether the device is the same one.
    let link: String = link
        .split_whitespace()
        .filter(|w| w.contains(':') || w.ends_with(':'))
        .collect::<Vec<_>>()
        .join(" ");
    let iptables = prereq::require_tool("iptables");
    let (_, chain) = multinode::run_in(
        cluster.node_ns(0),
        &iptables,
        &["-t", "nat", "-S", "WINDLASS-POSTROUTING"],
    );
    let (_, postrouting) = multinode::run_in(
        cluster.node_ns(0),
        &iptables,
        &["-t", "nat", "-S", "POSTROUTING"],
    );
    format!(
        "link: {link}\nroutes:\n{}neighbours:\n{}fdb:\n{}chain:\n{chain}postrouting:\n{postrouting}",
        owned_routes(cluster, 0),
        cluster.ip(0, &["-4", "neigh", "show", "dev", "wl.vxlan"]),
        multinode::tool_in(
            cluster.node_ns(0),
            "bridge",
            &["fdb", "show", "dev", "wl.vxlan"]
        ),
    )
}

#[test]
fn a_restarted_agent_adopts_the_network_and_traffic_keeps_flowing() {
    let mut cluster = Cluster::start(2, &["--overlay", "vxlan"]);
    let web0 = cluster.web_pod("web-0", 0);
    let web1 = cluster.web_pod("web-1", 1);
    assert_pods_talk(&cluster, &web0, &web1);
    let before = snapshot(&cluster);
    assert!(
        before.contains(&cluster.pod_cidr(1)),
        "no route to node 1's pods:\n{before}"
    );

    // Down: the kernel state stays, so traffic flows without the agent.
    cluster.agents[0].kill9();
    assert_pods_talk(&cluster, &web0, &web1);
    assert_eq!(
        snapshot(&cluster),
        before,
        "the network changed while the agent was down"
    );

    // Up again: it reconciles, finds everything in place and changes nothing.
    let log_before = cluster.agents[0].log().len();
    cluster.agents[0].restart().expect("restart agent 0");
    until(&cluster, "the restarted agent to sync the network", || {
        let log = cluster.agents[0].log();
        let since = log.get(log_before..).unwrap_or_default();
        if since.contains("node network in sync") {
            Ok(since.to_string())
        } else {
            Err("not yet".into())
        }
    });
    let log = cluster.agents[0].log();
    let since = log.get(log_before..).unwrap_or_default();
    let network_log: String = since
        .lines()
        .filter(|l| l.contains("windlass::node::network"))
        .map(|l| format!("{l}\n"))
        .collect();
    for change in ["installed", "removed", "recreating", "published"] {
        assert!(
            !network_log.contains(change),
            "the restarted agent changed the network ({change}):\n{network_log}"
        );
    }
    assert_eq!(
        snapshot(&cluster),
        before,
        "the restarted agent changed the network"
    );
    assert_pods_talk(&cluster, &web0, &web1);
}

#[test]
fn vxlan_connects_pods_on_nodes_on_different_l2_segments_behind_a_router() {
    let cluster = Cluster::start_with(2, &["--overlay", "vxlan"], Some(1));
    let cidrs = [cluster.pod_cidr(0), cluster.pod_cidr(1)];
    let macs = [published_mac(&cluster, 0), published_mac(&cluster, 1)];
    let web0 = cluster.web_pod("web-0", 0);
    let web1 = cluster.web_pod("web-1", 1);
    // Each node tunnels to the other's address, through the router.
    for (i, peer, dst) in [
        (0, 1, cluster.topology.node(1).underlay_ip),
        (1, 0, cluster.topology.node(0).underlay_ip),
    ] {
        let fdb = format!("{} dst {dst} self permanent", macs[peer]);
        until(&cluster, &format!("node {i}'s FDB entry {fdb}"), || {
            let entries = multinode::tool_in(
                cluster.node_ns(i),
                "bridge",
                &["fdb", "show", "dev", "wl.vxlan"],
            );
            let routes = owned_routes(&cluster, i);
            if entries.contains(&fdb) && routes.contains(&cidrs[peer]) {
                Ok(())
            } else {
                Err(format!("fdb:\n{entries}routes:\n{routes}"))
            }
        });
    }
    assert_pods_talk(&cluster, &web0, &web1);
    // The pods' packets crossed the router inside the tunnel: one hop between the nodes.
    let route = cluster.ip(
        1,
        &[
            "route",
            "get",
            &cluster.topology.node(0).underlay_ip.to_string(),
        ],
    );
    assert!(
        route.contains(&format!("via {}", multinode::SECOND_ROUTER)),
        "node 1 reaches node 0 {route}"
    );
}
