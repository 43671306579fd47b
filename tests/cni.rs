//! `windlass-cni` as runtimes drive it: every verb on every version, bad input, chaining,
//! connectivity (pod to pod, to the gateway, to itself through the bridge), 100 parallel ADDs
//! and DELs, and an ADD killed half-way. Each test builds its own node namespace; the plugin
//! runs inside it, so the bridge and veths never touch the host.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use windlass_cni::netlink;
use windlass_tests::NetNs;
use windlass_tests::cni::{self, Call, plugin_config, windlass_conflist};
use windlass_tests::prereq::require_tool;
use windlass_tests::topology::Topology;
use windlass_tests::traffic::{EchoServer, tcp_echo};

const PATIENCE: Duration = Duration::from_secs(5);
const SUBNET: &str = "10.244.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

/// One node, a data directory, and pod namespaces made on demand.
struct Net {
    topo: Topology,
    data: tempfile::TempDir,
    bin: PathBuf,
}

impl Net {
    fn new() -> Net {
        Net::with_nodes(1)
    }

    /// `nodes` nodes on one fabric; the plugin runs on node 0.
    fn with_nodes(nodes: usize) -> Net {
        Net {
            topo: Topology::builder()
                .nodes(nodes)
                .build()
                .expect("node namespaces"),
            data: tempfile::tempdir().expect("data dir"),
            bin: cni::windlass_cni_bin(),
        }
    }

    fn node(&self) -> &NetNs {
        &self.topo.node(0).ns
    }

    /// An empty pod namespace, removed when dropped.
    fn pod(&self, name: &str) -> NetNs {
        NetNs::create(&format!("{}-n0-{name}", self.topo.prefix())).expect("pod namespace")
    }

    fn conflist(&self, version: &str) -> Value {
        windlass_conflist(version, SUBNET, self.data.path())
    }

    /// The built-in IPAM's directory for network `windlass`.
    fn ipam_dir(&self) -> PathBuf {
        self.data.path().join("windlass")
    }

    /// Addresses the IPAM holds, with the owner (`<container id>/<ifname>`) each one names.
    fn allocated(&self) -> Vec<(Ipv4Addr, String)> {
        windlass_cni::ipam::read_allocations(&self.ipam_dir())
            .expect("read IPAM entries")
            .into_iter()
            .map(|a| (a.ip, format!("{}/{}", a.container_id, a.ifname)))
            .collect()
    }

    fn call(&self, call: &Call, config: &Value) -> cni::Answer {
        cni::invoke(self.node(), &self.bin, call, config.to_string().as_bytes())
            .expect("run windlass-cni")
    }

    /// Links in the node namespace other than loopback and the uplink.
    fn node_links(&self) -> BTreeSet<String> {
        let uplink = self.topo.node(0).uplink.clone();
        links(self.node())
            .into_iter()
            .filter(|l| l != "lo" && *l != uplink)
            .collect()
    }
}

fn links(ns: &NetNs) -> Vec<String> {
    ns.run(|| netlink::block_on(|nl| async move { nl.link_names().await }))
        .expect("enter namespace")
        .expect("list links")
}

/// (addresses of `ifname`, IPv4 routes) inside `ns`.
type Inside = (Vec<(Ipv4Addr, u8)>, Vec<(Ipv4Addr, u8, Option<Ipv4Addr>)>);

fn inside(ns: &NetNs, ifname: &str) -> Inside {
    let view = cni::ipv4_view(ns, ifname).expect("read pod network");
    let routes = view
        .routes
        .into_iter()
        .map(|(d, p, g, _)| (d, p, g))
        .collect();
    (view.addresses, routes)
}

fn ip_of(result: &Value) -> Ipv4Addr {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("result without an address: {result}"));
    cidr.split('/')
        .next()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("bad address {cidr}"))
}

#[test]
fn every_verb_works_on_every_supported_version() {
    let net = Net::new();
    let version = net.call(
        &Call::new("VERSION", "x", None),
        &json!({"cniVersion": "1.0.0"}),
    );
    let version = version.expect_ok("VERSION");
    assert_eq!(version["cniVersion"], "1.0.0");
    let supported: Vec<&str> = version["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(&v), "{v} missing from {supported:?}");
    }

    for (i, v) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = net.pod(&format!("v{i}"));
        let id = format!("sandbox{i}");
        let add = Call::new("ADD", &id, Some(pod.path()));
        let conflist = net.conflist(v);
        let config = plugin_config(&conflist, 0, None, &json!({}));
        let result = net.call(&add, &config).expect_ok(&format!("ADD {v}"));

        // The result is written in the configuration's version.
        assert_eq!(result["cniVersion"], v);
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            v < "1.0.0",
            "ips[].version exists before 1.0.0 only: {result}"
        );
        assert_eq!(
            result["interfaces"][2].get("mtu").is_some(),
            v == "1.1.0",
            "interface mtu is reported from 1.1.0 on: {result}"
        );
        assert_eq!(result["interfaces"][2]["name"], "eth0");
        assert_eq!(
            result["interfaces"][2]["sandbox"],
            pod.path().display().to_string()
        );
        assert_eq!(result["ips"][0]["interface"], 2);
        assert_eq!(result["ips"][0]["gateway"], GATEWAY.to_string());

        // ... and it is what the pod has.
        let ip = ip_of(&result);
        let (addresses, routes) = inside(&pod, "eth0");
        assert_eq!(addresses, vec![(ip, 24)]);
        assert!(
            routes.contains(&(Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY))),
            "{routes:?}"
        );
        assert_eq!(net.allocated().iter().filter(|(a, _)| *a == ip).count(), 1);

        // ADD again for the same attachment: the same address, one allocation.
        let again = net.call(&add, &config).expect_ok("second ADD");
        assert_eq!(ip_of(&again), ip);

        let with_prev = plugin_config(&conflist, 0, Some(&again), &json!({}));
        if v >= "0.4.0" {
            net.call(&add.with_command("CHECK"), &with_prev)
                .expect_ok(&format!("CHECK {v}"));
        } else {
            let code = net
                .call(&add.with_command("CHECK"), &with_prev)
                .expect_error("CHECK on 0.3.1");
            assert_eq!(code, 1, "CHECK does not exist before 0.4.0");
        }
        let status = net.call(&add.with_command("STATUS"), &config);
        let gc_config = {
            let mut c = config.clone();
            c["cni.dev/valid-attachments"] = json!([{"containerID": id, "ifname": "eth0"}]);
            c
        };
        let gc = net.call(&add.with_command("GC"), &gc_config);
        if v == "1.1.0" {
            status.expect_ok("STATUS");
            gc.expect_ok("GC");
            assert_eq!(
                inside(&pod, "eth0").0,
                vec![(ip, 24)],
                "GC kept a valid attachment"
            );
        } else {
            assert_eq!(status.expect_error("STATUS before 1.1.0"), 1);
            assert_eq!(gc.expect_error("GC before 1.1.0"), 1);
        }

        // DEL frees the address and removes the pair; a second DEL, and a DEL after the
        // namespace is gone, still succeed.
        let del = add.with_command("DEL");
        assert_eq!(net.call(&del, &with_prev).expect_ok("DEL"), Value::Null);
        assert!(net.allocated().is_empty(), "{:?}", net.allocated());
        assert_eq!(links(&pod), vec!["lo".to_string()]);
        net.call(&del, &config).expect_ok("second DEL");
        let gone = pod.path().to_path_buf();
        pod.remove().expect("remove pod namespace");
        net.call(&Call::new("DEL", &id, Some(&gone)), &config)
            .expect_ok("DEL with the namespace gone");
    }
    assert_eq!(net.node_links(), BTreeSet::from(["wl0".to_string()]));
}

#[test]
fn bad_input_gets_the_spec_error_code_and_leaves_nothing_behind() {
    let net = Net::new();
    let pod = net.pod("bad");
    let add = Call::new("ADD", "sandbox", Some(pod.path()));
    let good = plugin_config(&net.conflist("1.0.0"), 0, None, &json!({}));
    let check = |what: &str, call: &Call, config: &[u8], code: u64| {
        let answer = cni::invoke(net.node(), &net.bin, call, config).expect("run windlass-cni");
        assert!(
            answer.json["cniVersion"].is_string(),
            "{what}: {}",
            answer.json
        );
        assert!(answer.json["msg"].is_string(), "{what}: {}", answer.json);
        assert_eq!(answer.expect_error(what), code, "{what}");
        assert!(
            net.allocated().is_empty(),
            "{what} left {:?}",
            net.allocated()
        );
        assert!(
            net.node_links().iter().all(|l| l == "wl0"),
            "{what} left links {:?}",
            net.node_links()
        );
        assert_eq!(
            links(&pod),
            vec!["lo".to_string()],
            "{what} touched the pod"
        );
    };
    let text = good.to_string();
    check("malformed JSON", &add, b"{\"cniVersion\": \"1.0.0\",", 6);
    check("empty config", &add, b"", 6);
    let mut unsupported = good.clone();
    unsupported["cniVersion"] = json!("0.2.0");
    check(
        "unsupported version",
        &add,
        unsupported.to_string().as_bytes(),
        1,
    );
    let mut no_subnet = good.clone();
    no_subnet["ipam"]
        .as_object_mut()
        .expect("ipam")
        .remove("subnet");
    check("no subnet", &add, no_subnet.to_string().as_bytes(), 7);
    let mut masq = good.clone();
    masq["ipMasq"] = json!(true);
    check("ipMasq", &add, masq.to_string().as_bytes(), 2);
    for var in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let mut call = add.clone();
        call.unset.push(var);
        check(&format!("missing {var}"), &call, text.as_bytes(), 4);
    }
    let mut bad_args = add.clone();
    bad_args.args = "K8S_POD_NAME=x;NOT_A_KNOWN_KEY=1".into();
    check(
        "unknown CNI_ARGS without IgnoreUnknown",
        &bad_args,
        text.as_bytes(),
        4,
    );
    let missing_ns = Call::new(
        "ADD",
        "sandbox",
        Some(Path::new("/run/netns/wlt-does-not-exist")),
    );
    check("missing netns", &missing_ns, text.as_bytes(), 3);

    // An ADD that fails half-way (the pod already has an eth0) rolls back its address and veth.
    pod.run(|| netlink::block_on(|nl| async move { nl.add_veth("eth0", "eth0peer", None).await }))
        .expect("enter pod")
        .expect("add an eth0 to the pod");
    let answer = net.call(&add, &good);
    assert!(
        !answer.status.success(),
        "ADD onto an existing eth0 must fail"
    );
    assert!(
        net.allocated().is_empty(),
        "rolled back: {:?}",
        net.allocated()
    );
    assert!(
        net.node_links().iter().all(|l| l == "wl0"),
        "{:?}",
        net.node_links()
    );
}

#[test]
fn pods_reach_each_other_and_the_gateway() {
    let net = Net::new();
    let config = plugin_config(&net.conflist("1.0.0"), 0, None, &json!({}));
    let (a, b) = (net.pod("a"), net.pod("b"));
    let ip_a = ip_of(
        &net.call(&Call::new("ADD", "a", Some(a.path())), &config)
            .expect_ok("ADD a"),
    );
    let ip_b = ip_of(
        &net.call(&Call::new("ADD", "b", Some(b.path())), &config)
            .expect_ok("ADD b"),
    );
    assert_ne!(ip_a, ip_b);

    let server_b = EchoServer::start(&b, SocketAddr::new(IpAddr::V4(ip_b), 0)).expect("echo in b");
    let answers = tcp_echo(&a, server_b.addr(), &["hi"], PATIENCE).expect("a reaches b");
    assert_eq!(answers[0].peer.ip(), IpAddr::V4(ip_a), "bridged, not NATed");

    let gateway = EchoServer::start(net.node(), SocketAddr::new(IpAddr::V4(GATEWAY), 0))
        .expect("echo on the node's gateway address");
    let answers = tcp_echo(&a, gateway.addr(), &["hi"], PATIENCE).expect("a reaches the gateway");
    assert_eq!(answers[0].line, "hi");
}

/// A pod reaching a service address that leads back to itself: the node DNATs on the bridge
/// (br_netfilter, as kube-proxy's iptables mode works) and the frame must leave by the port it
/// came in on, which the bridge allows only with hairpin mode. The same setup without hairpin
/// mode fails, which shows the test measures what it claims.
#[test]
fn a_pod_reaches_itself_through_the_bridge_with_hairpin_mode() {
    require_tool("iptables");
    for hairpin in [true, false] {
        let net = Net::new();
        let mut conflist = net.conflist("1.0.0");
        conflist["plugins"][0]["hairpinMode"] = json!(hairpin);
        let config = plugin_config(&conflist, 0, None, &json!({}));
        let pod = net.pod("self");
        let ip = ip_of(
            &net.call(&Call::new("ADD", "self", Some(pod.path())), &config)
                .expect_ok("ADD"),
        );
        let server = EchoServer::start(&pod, SocketAddr::new(IpAddr::V4(ip), 0)).expect("echo");
        let port = server.addr().port().to_string();
        net.node()
            .sysctl("net/bridge/bridge-nf-call-iptables", "1")
            .expect("bridge netfilter in the node namespace");
        let vip = "10.96.0.10";
        for rule in [
            vec![
                "-A",
                "PREROUTING",
                "-d",
                vip,
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "DNAT",
            ]
            .into_iter()
            .map(String::from)
            .chain(["--to-destination".into(), format!("{ip}:{port}")])
            .collect::<Vec<_>>(),
            [
                "-A",
                "POSTROUTING",
                "-s",
                &ip.to_string(),
                "-d",
                &ip.to_string(),
                "-j",
                "MASQUERADE",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        ] {
            let out = net
                .node()
                .exec(Command::new("iptables").args(["-t", "nat"]).args(&rule))
                .expect("run iptables");
            assert!(out.status.success(), "iptables {rule:?}: {out:?}");
        }
        let target = SocketAddr::new(IpAddr::V4(vip.parse().expect("vip")), 80);
        let answer = tcp_echo(&pod, target, &["me"], Duration::from_secs(2));
        if hairpin {
            let answers = answer.expect("the pod reaches itself with hairpin mode on");
            assert_eq!(answers[0].line, "me");
        } else {
            assert!(
                answer.is_err(),
                "without hairpin mode the frame cannot turn back"
            );
        }
    }
}

/// The loopback plugin, then windlass-cni, then portmap, as containerd runs a conflist:
/// windlass-cni appends to the loopback result, accepts `runtimeConfig.portMappings`, and
/// portmap uses our result to forward a node port to the pod.
#[test]
fn chains_after_loopback_and_before_portmap() {
    require_tool("iptables");
    let net = Net::with_nodes(2);
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "windlass",
        "plugins": [
            {"type": "loopback"},
            {"type": "windlass-cni", "bridge": "wl0", "capabilities": {"portMappings": true},
             "ipam": {"type": "windlass", "subnet": SUBNET, "dataDir": net.data.path()}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    let pod = net.pod("chain");
    let add = Call::new("ADD", "chain", Some(pod.path()));
    let caps = json!({"portMappings": [
        {"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}]});
    let binaries = [
        cni::reference_plugin("loopback"),
        net.bin.clone(),
        cni::reference_plugin("portmap"),
    ];
    let mut prev: Option<Value> = None;
    for (i, binary) in binaries.iter().enumerate() {
        let config = plugin_config(&conflist, i, prev.as_ref(), &caps);
        let answer = cni::invoke(net.node(), binary, &add, config.to_string().as_bytes())
            .expect("run plugin");
        prev = Some(answer.expect_ok(&format!("ADD plugin {i}")));
    }
    let result = prev.expect("final result");
    let names: Vec<&str> = result["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names[0], "lo", "loopback's interface stays first: {result}");
    assert!(names.contains(&"eth0"), "{result}");
    let ours = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .find(|ip| {
            ip["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.244."))
        })
        .expect("our address in the final result");
    assert_eq!(
        result["interfaces"][ours["interface"].as_u64().expect("index") as usize]["name"],
        "eth0",
        "interface indices were renumbered after loopback's"
    );
    let pod_ip: Ipv4Addr = ours["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("pod ip");

    // portmap forwards the node's uplink address to the pod, using our result: a client on the
    // other node reaches the pod through node 0's port.
    let server =
        EchoServer::start(&pod, SocketAddr::new(IpAddr::V4(pod_ip), 8080)).expect("echo in pod");
    let node_ip = net.topo.node(0).underlay_ip;
    let answers = tcp_echo(
        &net.topo.node(1).ns,
        SocketAddr::new(IpAddr::V4(node_ip), 30080),
        &["mapped"],
        PATIENCE,
    )
    .expect("the other node reaches the pod through the node port");
    assert_eq!(answers[0].line, "mapped");
    drop(server);

    // DEL in reverse order, as libcni does.
    let final_result = result.clone();
    for (i, binary) in binaries.iter().enumerate().rev() {
        let config = plugin_config(&conflist, i, Some(&final_result), &caps);
        cni::invoke(
            net.node(),
            binary,
            &add.with_command("DEL"),
            config.to_string().as_bytes(),
        )
        .expect("run plugin")
        .expect_ok(&format!("DEL plugin {i}"));
    }
    assert!(net.allocated().is_empty());
}

#[test]
fn a_hundred_parallel_adds_get_distinct_addresses_and_dels_free_them_all() {
    const PODS: usize = 100;
    let net = Net::new();
    let config = plugin_config(&net.conflist("1.1.0"), 0, None, &json!({})).to_string();
    let pods: Vec<NetNs> = (0..PODS).map(|i| net.pod(&format!("c{i}"))).collect();
    let run_all = |command: &str| -> Vec<Value> {
        let children: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let call = Call::new(command, &format!("c{i}"), Some(pod.path()));
                cni::spawn(net.node(), &net.bin, &call, config.as_bytes()).expect("spawn")
            })
            .collect();
        children
            .into_iter()
            .map(|child| {
                let out = child.wait_with_output().expect("wait");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(out.status.success(), "{command} failed: {text}");
                serde_json::from_str(&text).unwrap_or(Value::Null)
            })
            .collect()
    };
    let results = run_all("ADD");
    let ips: BTreeSet<Ipv4Addr> = results.iter().map(ip_of).collect();
    assert_eq!(ips.len(), PODS, "every pod got its own address");
    assert_eq!(net.allocated().len(), PODS);
    for (i, pod) in pods.iter().enumerate() {
        let (addresses, _) = inside(pod, "eth0");
        assert_eq!(addresses, vec![(ip_of(&results[i]), 24)], "pod c{i}");
        let owner = net
            .allocated()
            .into_iter()
            .find(|(ip, _)| *ip == ip_of(&results[i]))
            .map(|(_, owner)| owner);
        assert_eq!(owner.as_deref(), Some(format!("c{i}/eth0").as_str()));
    }
    assert_eq!(
        net.node_links().len(),
        PODS + 1,
        "a veth per pod and the bridge"
    );

    run_all("DEL");
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    assert_eq!(net.node_links(), BTreeSet::from(["wl0".to_string()]));
}

#[test]
fn a_killed_add_leaks_nothing_after_gc() {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;

    let net = Net::new();
    let config = plugin_config(&net.conflist("1.1.0"), 0, None, &json!({}));
    let live = net.pod("live");
    let live_ip = ip_of(
        &net.call(&Call::new("ADD", "live", Some(live.path())), &config)
            .expect_ok("ADD live"),
    );
    let mut killed = Vec::new();
    for point in ["after-ipam", "after-veth"] {
        let pod = net.pod(point);
        let mut call = Call::new("ADD", point, Some(pod.path()));
        call.extra.push((
            windlass_cni::plugin::FAULT_ENV.to_string(),
            point.to_string(),
        ));
        let mut child =
            cni::spawn(net.node(), &net.bin, &call, config.to_string().as_bytes()).expect("spawn");
        let pid = Pid::from_raw(child.id() as i32);
        // The plugin stops itself at the fault point; kill it there.
        match waitpid(pid, Some(WaitPidFlag::WUNTRACED)).expect("waitpid") {
            WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
            other => panic!("the plugin did not stop at {point}: {other:?}"),
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap the killed plugin");
        killed.push(pod);
    }
    assert_eq!(
        net.allocated().len(),
        3,
        "the killed ADDs hold addresses: {:?}",
        net.allocated()
    );
    assert_eq!(
        net.node_links().len(),
        3,
        "bridge, live veth, half-made veth"
    );

    let mut gc = config.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "live", "ifname": "eth0"}]);
    net.call(&Call::new("GC", "x", None), &gc).expect_ok("GC");
    assert_eq!(
        net.allocated(),
        vec![(live_ip, "live/eth0".to_string())],
        "GC freed only the killed ADDs' addresses"
    );
    assert_eq!(net.node_links().len(), 2, "bridge and the live pod's veth");
    assert_eq!(inside(&live, "eth0").0, vec![(live_ip, 24)]);
    assert_eq!(
        links(&killed[1]),
        vec!["lo".to_string()],
        "the half-made pair is gone"
    );
}

#[test]
fn status_fails_with_code_50_when_exhausted_or_unwritable() {
    let net = Net::new();
    let mut conflist = net.conflist("1.1.0");
    conflist["plugins"][0]["ipam"]["rangeStart"] = json!("10.244.0.10");
    conflist["plugins"][0]["ipam"]["rangeEnd"] = json!("10.244.0.10");
    let config = plugin_config(&conflist, 0, None, &json!({}));
    let status = Call::new("STATUS", "x", None);
    net.call(&status, &config).expect_ok("STATUS with room");
    let pod = net.pod("only");
    net.call(&Call::new("ADD", "only", Some(pod.path())), &config)
        .expect_ok("ADD the only address");
    assert_eq!(
        net.call(&status, &config).expect_error("STATUS when full"),
        50
    );
    let other = net.pod("other");
    let full = net.call(&Call::new("ADD", "other", Some(other.path())), &config);
    assert!(
        full.expect_error("ADD when full") >= 100,
        "plugin-specific code"
    );

    let file = net.data.path().join("not-a-directory");
    std::fs::write(&file, b"").expect("write file");
    let mut unwritable = config.clone();
    unwritable["ipam"]["dataDir"] = json!(file);
    assert_eq!(
        net.call(&status, &unwritable)
            .expect_error("STATUS with an unusable data dir"),
        50
    );
}
