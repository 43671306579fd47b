//! What the multi-node network tests need beyond a topology and agents: an "outside" host on
//! the fabric (an address outside the cluster CIDR, like a machine on the Internet) that reports
//! the source address of each connection, entering a pod's network namespace by the pod's IP,
//! and `ip`/`bridge` output from a namespace.
//!
//! The outside host is a namespace `<prefix>-out` joined to the fabric bridge by a veth; it
//! runs `wl-probe peer-serve`, and dropping it (also while unwinding) kills the server and
//! removes the namespace, and with it the veth.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use windlass_cni::netlink;

use crate::topology::{Topology, UNDERLAY};
use crate::{HarnessError, NetNs, io_err, prereq};

/// A host on the fabric outside the cluster, answering TCP connections with the client's
/// address (`wl-probe peer-serve`).
#[derive(Debug)]
pub struct OutsideHost {
    // Drop order: the server, then the namespace.
    server: Option<Child>,
    ns: NetNs,
    ip: Ipv4Addr,
}

impl OutsideHost {
    /// Creates `<prefix>-out` with `ip`/24 on the fabric of `topology` and starts
    /// `wl-probe peer-serve <port>` in it; returns once it listens.
    pub fn start(topology: &Topology, ip: Ipv4Addr, port: u16) -> Result<Self, HarnessError> {
        prereq::require_root();
        let p = topology.prefix();
        let ns = NetNs::create(&format!("{p}-out"))?;
        let (fabric_side, host_side, bridge) =
            (format!("{p}o0"), format!("{p}o1"), format!("{p}br"));
        let file = ns.file()?;
        topology.fabric().run(|| {
            netlink::block_on(|nl| async move {
                nl.add_veth(&fabric_side, &host_side, Some(&file)).await?;
                nl.set_controller(&fabric_side, &bridge).await?;
                nl.set_up(&fabric_side).await
            })
        })??;
        let host_side = format!("{p}o1");
        ns.run(|| {
            netlink::block_on(|nl| async move {
                nl.set_up("lo").await?;
                nl.set_up(&host_side).await?;
                nl.add_address(&host_side, IpAddr::V4(ip), UNDERLAY.1).await
            })
        })??;
        let mut host = OutsideHost {
            server: None,
            ns,
            ip,
        };
        let mut command = Command::new(crate::proxy::wl_probe_bin());
        command
            .args(["peer-serve", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = host
            .ns
            .run(|| command.spawn())?
            .map_err(io_err("start", "wl-probe peer-serve"))?;
        let stdout = child.stdout.take();
        host.server = Some(child);
        // The first line says it listens.
        let mut line = String::new();
        if let Some(stdout) = stdout {
            BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(io_err("read from", "wl-probe peer-serve"))?;
        }
        if !line.contains("serving") {
            return Err(HarnessError::Setup(format!(
                "wl-probe peer-serve did not start: {line:?}"
            )));
        }
        Ok(host)
    }

    /// The host's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The network namespace of the pod with address `ip` among the sandboxes under an agent's
/// data dir (the oci runtime pins them at `<data dir>/sandboxes/<id>/ns/net`).
pub fn pod_netns(agent_data_dir: &Path, ip: Ipv4Addr) -> Option<NetNs> {
    let sandboxes = agent_data_dir.join("sandboxes");
    for entry in std::fs::read_dir(&sandboxes).ok()?.flatten() {
        let path = entry.path().join("ns").join("net");
        let Ok(ns) = NetNs::open(&path) else {
            continue;
        };
        let has = ns
            .run(|| {
                netlink::block_on(|nl| async move {
                    let mut all = Vec::new();
                    for name in nl.link_names().await? {
                        let index = nl.link_index(&name).await?;
                        all.extend(nl.ipv4_addresses(index).await?);
                    }
                    Ok::<_, netlink::NetlinkError>(all)
                })
            })
            .ok()
            .and_then(Result::ok)
            .is_some_and(|addrs| addrs.iter().any(|(a, _)| *a == ip));
        if has {
            return Some(ns);
        }
    }
    None
}

/// Runs `program args...` inside `ns` and returns (success, stdout + stderr).
pub fn run_in(ns: &NetNs, program: &Path, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(program);
    command.args(args);
    match ns.run(|| command.output()) {
        Ok(Ok(out)) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Ok(Err(e)) => (false, format!("cannot run {}: {e}", program.display())),
        Err(e) => (false, format!("cannot enter {}: {e}", ns.name())),
    }
}

/// `ip args...` (or `bridge args...` with `tool = "bridge"`) inside `ns`: its stdout, or a
/// failure with what it said.
pub fn tool_in(ns: &NetNs, tool: &str, args: &[&str]) -> String {
    let program = prereq::require_tool(tool);
    let (ok, out) = run_in(ns, &program, args);
    assert!(
        ok,
        "{tool} {} in {} failed: {out}",
        args.join(" "),
        ns.name()
    );
    out
}

/// The subnet of the router's second leg ([`route_node_via_fabric`]), TEST-NET-2.
pub const SECOND_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 51, 100, 0), 24);
/// The fabric's (the router's) address on [`SECOND_SUBNET`].
pub const SECOND_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

/// Moves node `index` of `topology` off the shared L2 segment: its fabric port goes onto a
/// second bridge in the fabric namespace, which routes between the two (with proxy ARP on the
/// first bridge, so the other nodes reach it through the router). The node keeps its address,
/// now a /32 with the router as its next hop for the underlay. Its peers and it are then on
/// different L2 segments with a router in between, where only an overlay carries pod traffic.
/// Call [`Topology::fabric_address`] first. Everything lives in the topology's namespaces.
pub fn route_node_via_fabric(topology: &Topology, index: usize) -> Result<(), HarnessError> {
    let p = topology.prefix();
    let node = topology.node(index);
    let (bridge, first, port) = (format!("{p}b2"), format!("{p}br"), format!("{p}f{index}"));
    let router = format!("{SECOND_ROUTER}/{}", SECOND_SUBNET.1);
    let underlay = format!("{}/{}", UNDERLAY.0, UNDERLAY.1);
    let fabric = topology.fabric();
    let has_bridge = run_in(
        fabric,
        &prereq::require_tool("ip"),
        &["link", "show", &bridge],
    )
    .0;
    if !has_bridge {
        tool_in(fabric, "ip", &["link", "add", &bridge, "type", "bridge"]);
        tool_in(fabric, "ip", &["addr", "add", &router, "dev", &bridge]);
        tool_in(fabric, "ip", &["link", "set", &bridge, "up"]);
        fabric.sysctl("net/ipv4/ip_forward", "1")?;
        fabric.sysctl(&format!("net/ipv4/conf/{first}/proxy_arp"), "1")?;
    }
    tool_in(fabric, "ip", &["link", "set", &port, "master", &bridge]);
    let host = format!("{}/32", node.underlay_ip);
    tool_in(fabric, "ip", &["route", "replace", &host, "dev", &bridge]);
    let old = format!("{}/{}", node.underlay_ip, UNDERLAY.1);
    tool_in(&node.ns, "ip", &["addr", "del", &old, "dev", &node.uplink]);
    tool_in(&node.ns, "ip", &["addr", "add", &host, "dev", &node.uplink]);
    let router_ip = SECOND_ROUTER.to_string();
    tool_in(
        &node.ns,
        "ip",
        &["route", "add", &router_ip, "dev", &node.uplink],
    );
    tool_in(
        &node.ns,
        "ip",
        &["route", "add", &underlay, "via", &router_ip],
    );
    Ok(())
}
