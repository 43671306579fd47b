//! The eBPF pipeline end to end: the tc counter built by `agent/build.rs`, loaded with aya,
//! attached to a pod's interface, counting real traffic, with its map pinned and re-adopted.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use windlass::ebpf::counter::{Direction, TcCounter};
use windlass_tests::bpffs::PinDir;
use windlass_tests::topology::{POD_IFACE, Topology};
use windlass_tests::traffic::{EchoServer, tcp_echo};

const PATIENCE: Duration = Duration::from_secs(5);
const REQUESTS: usize = 20;
const PAYLOAD: &str = "0123456789abcdef0123456789abcdef"; // 32 bytes per request line

fn send(topo: &Topology, server: &EchoServer) {
    let lines = vec![PAYLOAD; REQUESTS];
    let answers = tcp_echo(&topo.pod(0, 0).ns, server.addr(), &lines, PATIENCE).expect("echo");
    assert_eq!(answers.len(), REQUESTS);
}

#[test]
fn tc_counter_counts_pod_traffic_and_survives_reload_through_its_pin() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(2)
        .build()
        .expect("build topology");
    let pins = PinDir::create(topo.prefix()).expect("create pin dir");
    let target = topo.pod(0, 1);
    let server = EchoServer::start(&target.ns, SocketAddr::new(IpAddr::V4(target.ip), 0))
        .expect("start server");

    let counter = target
        .ns
        .run(|| TcCounter::attach(POD_IFACE, pins.path()))
        .expect("enter pod namespace")
        .expect("load and attach the tc counter");
    assert!(
        counter.pin_path().exists(),
        "map pinned at {}",
        counter.pin_path().display()
    );

    send(&topo, &server);
    let ingress = counter.read(Direction::Ingress).expect("read ingress");
    let egress = counter.read(Direction::Egress).expect("read egress");
    // Every request is at least one packet in, every answer at least one packet out, and the
    // bytes include at least the payloads.
    assert!(ingress.packets >= REQUESTS as u64, "ingress {ingress:?}");
    assert!(egress.packets >= REQUESTS as u64, "egress {egress:?}");
    assert!(
        ingress.bytes >= (REQUESTS * (PAYLOAD.len() + 1)) as u64,
        "ingress {ingress:?}"
    );
    assert!(
        egress.bytes >= (REQUESTS * (PAYLOAD.len() + 1)) as u64,
        "egress {egress:?}"
    );

    // Dropping the counter detaches it: traffic now is not counted...
    drop(counter);
    send(&topo, &server);
    // ...and attaching again re-adopts the pinned map instead of starting from zero.
    let counter = target
        .ns
        .run(|| TcCounter::attach(POD_IFACE, pins.path()))
        .expect("enter pod namespace")
        .expect("re-attach the tc counter");
    let readopted = counter.read(Direction::Ingress).expect("read ingress");
    assert!(
        readopted.packets >= ingress.packets,
        "pinned counts survive a reload: {readopted:?} after {ingress:?}"
    );
    assert!(
        readopted.packets < ingress.packets + REQUESTS as u64,
        "traffic while detached was not counted: {readopted:?} after {ingress:?}"
    );

    send(&topo, &server);
    let after = counter.read(Direction::Ingress).expect("read ingress");
    assert!(
        after.packets >= readopted.packets + REQUESTS as u64,
        "{after:?} after {readopted:?}"
    );
}
