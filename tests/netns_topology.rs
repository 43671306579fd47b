//! The netns harness itself, as the base every other integration test stands on: nodes on a
//! fabric, pods behind veths, pod-to-pod across nodes over routes the test installs.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use windlass_tests::prereq::require_tool;
use windlass_tests::topology::Topology;
use windlass_tests::traffic::{EchoServer, tcp_echo};

const PATIENCE: Duration = Duration::from_secs(5);

#[test]
fn pod_on_node_a_reaches_pod_on_node_b_over_installed_routes() {
    let topo = Topology::builder()
        .nodes(2)
        .pods_per_node(1)
        .build()
        .expect("build a two-node topology");
    let (pod_a, pod_b) = (topo.pod(0, 0), topo.pod(1, 0));
    let server = EchoServer::start(&pod_b.ns, SocketAddr::new(IpAddr::V4(pod_b.ip), 0))
        .expect("start echo server in pod B");

    // No route between the nodes' pod CIDRs yet, and no default route: the SYN dies at node A.
    let before = tcp_echo(&pod_a.ns, server.addr(), &["hello"], PATIENCE);
    assert!(
        before.is_err(),
        "pod B must be unreachable before routes exist, got {before:?}"
    );

    topo.route_pod_cidrs().expect("install pod CIDR routes");
    let answers = tcp_echo(&pod_a.ns, server.addr(), &["hello", "again"], PATIENCE)
        .expect("pod A reaches pod B once routes exist");
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].line, "hello");
    assert_eq!(answers[1].line, "again");
    // Routed, not NATed: pod B sees pod A's own address.
    assert_eq!(answers[0].peer.ip(), IpAddr::V4(pod_a.ip));
}

#[test]
fn nodes_have_no_default_route_and_pods_route_via_their_node() {
    require_tool("ip");
    let topo = Topology::builder()
        .nodes(2)
        .pods_per_node(1)
        .build()
        .expect("build a two-node topology");
    for node in topo.nodes() {
        let out = node
            .ns
            .exec(Command::new("ip").args(["-4", "route", "show", "default"]))
            .expect("run ip in node namespace");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "",
            "node {} must have no default route",
            node.index
        );
        let links = node
            .ns
            .exec(Command::new("ip").args(["-o", "link", "show", "dev", &node.uplink]))
            .expect("run ip in node namespace");
        assert!(
            links.status.success(),
            "uplink {} exists in its node",
            node.uplink
        );
    }
    let pod = topo.pod(1, 0);
    let out = pod
        .ns
        .exec(Command::new("ip").args(["-4", "route", "show", "default"]))
        .expect("run ip in pod namespace");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("via {}", topo.node(1).gateway)),
        "pod's default route goes via its node's gateway: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn pods_on_one_node_reach_each_other_without_extra_routes() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(2)
        .build()
        .expect("build a one-node topology");
    let (p0, p1) = (topo.pod(0, 0), topo.pod(0, 1));
    let server =
        EchoServer::start(&p1.ns, SocketAddr::new(IpAddr::V4(p1.ip), 0)).expect("start server");
    let answers = tcp_echo(&p0.ns, server.addr(), &["same node"], PATIENCE)
        .expect("pods on one node reach each other");
    assert_eq!(answers[0].peer.ip(), IpAddr::V4(p0.ip));
}
