//! The CNI commands: ADD, DEL, CHECK, VERSION, STATUS and GC for bridge mode with the built-in
//! IPAM. [`run`] takes the environment and stdin and returns what to print on stdout.
//!
//! A failed ADD undoes what it did (the veth pair, the address) before reporting, so the
//! runtime never has to clean up after an error. A plugin killed in the middle of an ADD leaves
//! at most a reservation and a veth that DEL or GC remove.

use serde_json::{Value, json};

use crate::bridge::{self, host_veth_name};
use crate::config::{self, CniEnv, Command, NetConf};
use crate::error::{CniError, chain};
use crate::netlink;
use crate::netns::NetNs;
use crate::result::{CniResult, Interface, IpConfig, RouteConf};
use crate::version::Version;

/// Environment variable that makes the plugin stop itself (SIGSTOP) at a named point of ADD:
/// `after-ipam` or `after-veth`. For crash tests, which kill it there.
pub const FAULT_ENV: &str = "WINDLASS_CNI_FAULT";

/// What the plugin prints and whether it succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The JSON for stdout (a result, a version report, an error), or nothing.
    pub stdout: Option<Value>,
    /// Whether to exit 0.
    pub success: bool,
}

/// Runs one invocation: environment through `get_env`, the configuration in `stdin`.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    // The version labels every answer, errors included, so it is read first.
    let decoded = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(config::decode(stdin))
    };
    let version = match &decoded {
        Some(Ok(value)) => Some(config::version_of(value)),
        _ => None,
    };
    let label = match &version {
        Some(Ok(version)) => *version,
        _ => Version::LATEST,
    };
    let fail = |e: CniError| Outcome {
        stdout: Some(e.to_json(label)),
        success: false,
    };
    let env = match CniEnv::from_lookup(&get_env) {
        Ok(env) => env,
        Err(e) => return fail(e),
    };
    if env.command == Command::Version {
        return Outcome {
            stdout: Some(json!({
                "cniVersion": label.as_str(),
                "supportedVersions": Version::supported_strings(),
            })),
            success: true,
        };
    }
    let (value, version) = match (decoded, version) {
        (Some(Ok(value)), Some(version)) => (value, version),
        (Some(Err(e)), _) => return fail(e),
        _ => {
            return fail(CniError::new(
                CniError::DECODE,
                "failed to decode the network configuration",
                "stdin is empty",
            ));
        }
    };
    let conf = match version.and_then(|v| NetConf::from_value(value, v)) {
        Ok(conf) => conf,
        Err(e) => return fail(e),
    };
    let version = conf.cni_version;
    let result = match env.command {
        Command::Add => add(&env, &conf).map(Some),
        Command::Del => del(&env, &conf).map(|()| None),
        Command::Check if version.has_check() => check(&env, &conf).map(|()| None),
        Command::Status if version.has_status_and_gc() => status(&conf).map(|()| None),
        Command::Gc if version.has_status_and_gc() => gc(&conf).map(|()| None),
        Command::Check | Command::Status | Command::Gc => Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("{:?} does not exist in CNI {version}", env.command),
        )),
        Command::Version => unreachable!("answered above"),
    };
    match result {
        Ok(stdout) => Outcome {
            stdout: stdout.map(|r| r.to_json(version)),
            success: true,
        },
        Err(e) => fail(e),
    }
}

fn fault(point: &str) {
    if std::env::var(FAULT_ENV).is_ok_and(|v| v == point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

fn ipam_error(e: crate::ipam::IpamError) -> CniError {
    match e {
        crate::ipam::IpamError::Exhausted(range) => CniError::new(
            CniError::NO_ADDRESSES,
            "no IP addresses available",
            format!("every address in {range} is allocated"),
        ),
        crate::ipam::IpamError::InvalidConfig(text) => CniError::new(
            CniError::INVALID_CONFIG,
            "invalid network configuration",
            text,
        ),
        other => CniError::new(CniError::IO, "IPAM state is not accessible", chain(&other)),
    }
}

fn open_netns(env: &CniEnv) -> Result<NetNs, CniError> {
    let path = env.netns.as_ref().ok_or_else(|| {
        CniError::new(
            CniError::INVALID_ENV,
            "invalid environment",
            "CNI_NETNS is required",
        )
    })?;
    NetNs::open(path).map_err(|e| {
        CniError::new(
            CniError::UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            chain(&e),
        )
    })
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError> {
    let ns = open_netns(env)?;
    let ns_file = ns.file().map_err(|e| {
        CniError::new(
            CniError::UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            chain(&e),
        )
    })?;
    let pool = &conf.ipam.pool;
    let ip = pool
        .allocate(&env.container_id, &env.ifname)
        .map_err(ipam_error)?;
    fault("after-ipam");
    let host = host_veth_name(&env.container_id, &env.ifname);
    let attached = attach(env, conf, &ns, &ns_file, &host, ip);
    match attached {
        Ok(result) => Ok(result),
        Err(e) => {
            // Undo: the pair (removing the host end removes the container end) and the address.
            let _ = netlink::block_on(|nl| async move { nl.del_link(&host).await });
            let _ = pool.release(&env.container_id, &env.ifname);
            Err(e)
        }
    }
}

fn attach(
    env: &CniEnv,
    conf: &NetConf,
    ns: &NetNs,
    ns_file: &std::fs::File,
    host: &str,
    ip: std::net::Ipv4Addr,
) -> Result<CniResult, CniError> {
    let (bridge, veth) = netlink::block_on(|nl| async move {
        let bridge = bridge::ensure_bridge(&nl, conf).await?;
        let veth = bridge::add_veth(&nl, conf, &bridge, host, &env.ifname, ns_file).await?;
        Ok::<_, CniError>((bridge, veth))
    })?;
    if conf.is_gateway {
        bridge::enable_forwarding()?;
    }
    fault("after-veth");
    let pool = &conf.ipam.pool;
    let container = bridge::configure_container(
        ns,
        &env.ifname,
        ip,
        pool.subnet.prefix,
        pool.gateway,
        &conf.ipam.routes,
    )?;
    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: bridge.mac,
                mtu: conf.mtu,
                sandbox: None,
            },
            Interface {
                name: veth.name,
                mac: veth.mac,
                mtu: conf.mtu,
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac: container.mac,
                mtu: conf.mtu,
                sandbox: Some(ns.path().display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            address: format!("{ip}/{}", pool.subnet.prefix),
            gateway: Some(pool.gateway.to_string()),
            interface: Some(2),
        }],
        routes: conf
            .ipam
            .routes
            .iter()
            .map(|(dst, prefix, gw)| RouteConf {
                dst: format!("{dst}/{prefix}"),
                gw: gw.map(|g| g.to_string()),
            })
            .collect(),
        dns: conf.dns.clone(),
    };
    // Chained after another plugin: its result comes first, ours is appended.
    if let Some(prev) = &conf.prev_result {
        let mut merged = prev.clone();
        merged.extend(result);
        result = merged;
    }
    Ok(result)
}

fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let host = host_veth_name(&env.container_id, &env.ifname);
    netlink::block_on(|nl| async move { nl.del_link(&host).await })
        .map_err(|e| bridge::kernel("failed to remove the veth pair", &e))?;
    conf.ipam
        .pool
        .release(&env.container_id, &env.ifname)
        .map_err(ipam_error)
}

fn check_failed(details: impl Into<String>) -> CniError {
    CniError::new(
        CniError::CHECK_FAILED,
        "the attachment does not match its result",
        details,
    )
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            CniError::INVALID_CONFIG,
            "invalid network configuration",
            "prevResult is required for CHECK",
        )
    })?;
    let ns = open_netns(env)?;
    let netns_path = ns.path().display().to_string();
    let pool = &conf.ipam.pool;
    let Some(ip) = pool
        .lookup(&env.container_id, &env.ifname)
        .map_err(ipam_error)?
    else {
        return Err(CniError::new(
            CniError::UNKNOWN_CONTAINER,
            "no address is allocated to this container",
            format!("{} / {}", env.container_id, env.ifname),
        ));
    };
    let expected = format!("{ip}/{}", pool.subnet.prefix);
    let ours = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.as_deref() == Some(netns_path.as_str()))
        .ok_or_else(|| {
            check_failed(format!(
                "prevResult has no interface {} in {netns_path}",
                env.ifname
            ))
        })?;
    if !prev
        .ips
        .iter()
        .any(|i| i.interface == Some(ours) && i.address == expected)
    {
        return Err(check_failed(format!(
            "prevResult does not list {expected}, the address allocated to this container"
        )));
    }
    let host = host_veth_name(&env.container_id, &env.ifname);
    let bridge_name = conf.bridge.clone();
    let host_name = host.clone();
    netlink::block_on(|nl| async move {
        let bridge = nl.link(&bridge_name).await?;
        let veth = nl.link(&host_name).await?;
        Ok::<_, netlink::NetlinkError>((bridge, veth))
    })
    .map_err(|e| bridge::kernel("failed to read the host's links", &e))
    .and_then(|(bridge, veth)| {
        let bridge =
            bridge.ok_or_else(|| check_failed(format!("bridge {} is missing", conf.bridge)))?;
        let veth = veth.ok_or_else(|| check_failed(format!("host veth {host} is missing")))?;
        if bridge::controller_of(&veth) != Some(bridge.header.index) {
            return Err(check_failed(format!(
                "{host} is not on bridge {}",
                conf.bridge
            )));
        }
        Ok(())
    })?;
    let ifname = env.ifname.clone();
    let inside = ns
        .run(|| netlink::block_on(|nl| async move { nl.ipv4_view(&ifname).await }))
        .map_err(|e| bridge::kernel("failed to enter the container's network namespace", &e))?;
    let netlink::Ipv4View {
        index,
        addresses,
        routes,
    } = inside.map_err(|e| match e {
        netlink::NetlinkError::LinkNotFound(name) => {
            check_failed(format!("{name} is missing in the container"))
        }
        other => bridge::kernel("failed to read the container's network", &other),
    })?;
    if !addresses.contains(&(ip, pool.subnet.prefix)) {
        return Err(check_failed(format!(
            "{} does not have {expected}",
            env.ifname
        )));
    }
    for (dst, prefix, gw) in &conf.ipam.routes {
        let gw = gw.unwrap_or(pool.gateway);
        if !routes
            .iter()
            .any(|(d, p, g, oif)| d == dst && p == prefix && *g == Some(gw) && *oif == Some(index))
        {
            return Err(check_failed(format!(
                "route {dst}/{prefix} via {gw} is missing in the container"
            )));
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    conf.ipam.pool.status().map_err(|e| {
        CniError::new(
            CniError::NOT_AVAILABLE,
            "windlass-cni cannot attach new containers",
            chain(&e),
        )
    })
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            CniError::INVALID_CONFIG,
            "invalid network configuration",
            "cni.dev/valid-attachments is required for GC",
        )
    })?;
    let valid_pairs: Vec<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let keep: Vec<String> = valid
        .iter()
        .map(|a| host_veth_name(&a.container_id, &a.ifname))
        .collect();
    let bridge_name = conf.bridge.clone();
    netlink::block_on(|nl| async move {
        for name in bridge::host_veths_on(&nl, &bridge_name).await? {
            if !keep.contains(&name) {
                nl.del_link(&name)
                    .await
                    .map_err(|e| bridge::kernel("failed to remove a stale veth", &e))?;
            }
        }
        Ok::<_, CniError>(())
    })?;
    conf.ipam.pool.gc(&valid_pairs).map_err(ipam_error)?;
    Ok(())
}
