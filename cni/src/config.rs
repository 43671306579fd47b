//! The plugin's inputs: the CNI environment variables and the network configuration on stdin,
//! validated into [`CniEnv`] and [`NetConf`] with the spec's error codes.
//!
//! Field names are the reference `bridge` and `host-local` plugins' (`bridge`, `mtu`,
//! `isGateway`, `hairpinMode`, `promiscMode`, `ipam.subnet`, `rangeStart`, `rangeEnd`,
//! `gateway`, `routes`, `dataDir`, `ranges`), so existing conflists read naturally. Keys that
//! libcni and runtimes add (`prevResult`, `runtimeConfig`, `args`, `capabilities`, ...) are
//! accepted; options this plugin does not implement (`ipMasq: true`, `vlan`, IPv6 ranges) are
//! refused with code 2 naming the field, rather than silently ignored.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::error::CniError;
use crate::ipam::{IpamError, Pool, Subnet};
use crate::result::{CniResult, Dns, RouteConf};
use crate::version::Version;

/// Where allocations live when the configuration names no `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/windlass/cni";
/// The bridge used when the configuration names none.
pub const DEFAULT_BRIDGE: &str = "wl0";

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it; succeeds when there is nothing left to remove.
    Del,
    /// Verify the attachment against `prevResult`.
    Check,
    /// Report the supported versions.
    Version,
    /// Report whether the plugin can take new ADDs.
    Status,
    /// Free everything not in `cni.dev/valid-attachments`.
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`. Unknown keys are an error (code 4) unless `IgnoreUnknown` is set, as
    /// in the reference plugins; containerd always sets it.
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::new(
                    CniError::INVALID_ENV,
                    "invalid CNI_ARGS",
                    format!("{pair:?} is not KEY=VALUE"),
                ));
            };
            let value = value.to_string();
            match key {
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(value),
                "K8S_POD_NAME" => args.pod_name = Some(value),
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = Some(value),
                "K8S_POD_UID" => args.pod_uid = Some(value),
                "IgnoreUnknown" => {
                    ignore_unknown = matches!(value.to_ascii_lowercase().as_str(), "1" | "true")
                }
                other => unknown.push(other.to_string()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(CniError::new(
                CniError::INVALID_ENV,
                "invalid CNI_ARGS",
                format!(
                    "unknown keys {} (set IgnoreUnknown=1 to ignore them)",
                    unknown.join(", ")
                ),
            ));
        }
        Ok(args)
    }
}

/// The CNI environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (required for ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (required for ADD and CHECK; optional for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (required for ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
}

fn invalid_env(details: impl Into<String>) -> CniError {
    CniError::new(CniError::INVALID_ENV, "invalid environment", details)
}

/// Whether `name` can name a network interface (what the kernel and the spec accept).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl CniEnv {
    /// Reads and checks the variables the command needs, through `get` (the process
    /// environment in the binary, a map in tests). A missing or malformed one is code 4.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let non_empty = |key: &str| get(key).filter(|v| !v.is_empty());
        let command =
            non_empty("CNI_COMMAND").ok_or_else(|| invalid_env("CNI_COMMAND is not set"))?;
        let command = Command::parse(&command)
            .ok_or_else(|| invalid_env(format!("CNI_COMMAND={command} is not a CNI command")))?;
        let attaching = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut env = CniEnv {
            command,
            container_id: String::new(),
            netns: non_empty("CNI_NETNS").map(PathBuf::from),
            ifname: String::new(),
            args: CniArgs::default(),
        };
        if !attaching {
            return Ok(env);
        }
        let required = |key: &str| {
            non_empty(key).ok_or_else(|| invalid_env(format!("{key} is required for {command:?}")))
        };
        env.container_id = required("CNI_CONTAINERID")?;
        if !valid_container_id(&env.container_id) {
            return Err(invalid_env(format!(
                "CNI_CONTAINERID {:?} must start with a letter or digit and contain only \
                 letters, digits, '_', '.' and '-'",
                env.container_id
            )));
        }
        env.ifname = required("CNI_IFNAME")?;
        if !valid_ifname(&env.ifname) {
            return Err(invalid_env(format!(
                "CNI_IFNAME {:?} is not a valid interface name",
                env.ifname
            )));
        }
        if matches!(command, Command::Add | Command::Check) && env.netns.is_none() {
            return Err(invalid_env(format!(
                "CNI_NETNS is required for {command:?}"
            )));
        }
        env.args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(env)
    }
}

/// Capability arguments a runtime passes in `runtimeConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// `portMappings`: accepted and left to a chained `portmap` plugin, which receives them from
    /// the runtime itself.
    #[serde(default)]
    pub port_mappings: Vec<Value>,
    /// `dns`: the pod's DNS settings, reported in the result when the configuration has none.
    #[serde(default)]
    pub dns: Option<Dns>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// The container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    is_gateway: Option<bool>,
    is_default_gateway: Option<bool>,
    hairpin_mode: Option<bool>,
    promisc_mode: Option<bool>,
    ip_masq: Option<bool>,
    vlan: Option<u32>,
    ipam: Option<RawIpam>,
    dns: Option<Dns>,
    prev_result: Option<CniResult>,
    runtime_config: Option<RuntimeConfig>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<Ipv4Addr>,
    range_end: Option<Ipv4Addr>,
    gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    kind: Option<String>,
    subnet: Option<String>,
    range_start: Option<Ipv4Addr>,
    range_end: Option<Ipv4Addr>,
    gateway: Option<Ipv4Addr>,
    routes: Option<Vec<RouteConf>>,
    data_dir: Option<PathBuf>,
    ranges: Option<Vec<Vec<RawRange>>>,
}

/// The built-in IPAM's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConf {
    /// The allocator over the configured range and data directory.
    pub pool: Pool,
    /// Routes to install in the container (a default route when the configuration has none).
    pub routes: Vec<(Ipv4Addr, u8, Option<Ipv4Addr>)>,
}

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The configuration's `cniVersion`; results are written in it.
    pub cni_version: Version,
    /// The network name.
    pub name: String,
    /// The bridge to attach to (`wl0` by default).
    pub bridge: String,
    /// MTU of the bridge (when this plugin creates it) and of both veth ends.
    pub mtu: Option<u32>,
    /// Whether the bridge gets the gateway address (default true).
    pub is_gateway: bool,
    /// Whether hairpin mode is set on the bridge port (default true).
    pub hairpin_mode: bool,
    /// Whether the bridge is put in promiscuous mode (default false).
    pub promisc_mode: bool,
    /// Addresses and routes.
    pub ipam: IpamConf,
    /// DNS settings for the result.
    pub dns: Dns,
    /// The previous plugin's result (chained ADD) or this attachment's result (CHECK, DEL).
    pub prev_result: Option<CniResult>,
    /// Capability arguments.
    pub runtime_config: RuntimeConfig,
    /// GC's `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn invalid(details: impl Into<String>) -> CniError {
    CniError::new(
        CniError::INVALID_CONFIG,
        "invalid network configuration",
        details,
    )
}

fn unsupported(details: impl Into<String>) -> CniError {
    CniError::new(CniError::UNSUPPORTED_FIELD, "unsupported field", details)
}

/// Reads only the `cniVersion` of a configuration: the version to label answers with, and
/// code 1 when it is one this plugin does not speak. A configuration without one is 0.1.0, as
/// libcni reads it.
pub fn version_of(value: &Value) -> Result<Version, CniError> {
    let text = match value.get("cniVersion") {
        None | Some(Value::Null) => "0.1.0",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(invalid(format!("cniVersion {other} is not a string")));
        }
    };
    Version::parse(text).ok_or_else(|| {
        CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "cniVersion {text:?} is not supported; supported versions: {}",
                Version::supported_strings().join(", ")
            ),
        )
    })
}

/// Decodes stdin: code 6 when it is not a JSON object.
pub fn decode(stdin: &[u8]) -> Result<Value, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            CniError::DECODE,
            "failed to decode the network configuration",
            e.to_string(),
        )
    })?;
    if !value.is_object() {
        return Err(CniError::new(
            CniError::DECODE,
            "failed to decode the network configuration",
            "the configuration is not a JSON object",
        ));
    }
    Ok(value)
}

fn valid_network_name(name: &str) -> bool {
    valid_container_id(name)
}

fn parse_cidr(field: &str, text: &str) -> Result<(Ipv4Addr, u8), CniError> {
    let bad = || invalid(format!("{field} {text:?} is not an IPv4 CIDR"));
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    if ip.contains(':') {
        return Err(unsupported(format!(
            "{field}: {text:?}: IPv6 is not supported yet"
        )));
    }
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((ip, prefix))
}

impl NetConf {
    /// Validates a decoded configuration whose version `version_of` accepted.
    pub fn from_value(value: Value, version: Version) -> Result<NetConf, CniError> {
        let raw: RawConf = serde_path_to_error::deserialize(value)
            .map_err(|e| invalid(format!("{}: {}", e.path(), e.inner())))?;
        let name = raw.name.ok_or_else(|| invalid("name is required"))?;
        if !valid_network_name(&name) {
            return Err(invalid(format!(
                "name {name:?} must start with a letter or digit and contain only letters, \
                 digits, '_', '.' and '-'"
            )));
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if !valid_ifname(&bridge) {
            return Err(invalid(format!(
                "bridge {bridge:?} is not a valid interface name"
            )));
        }
        if let Some(mtu) = raw.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid(format!("mtu {mtu} is outside 68..65535")));
        }
        if raw.ip_masq == Some(true) {
            return Err(unsupported(
                "ipMasq: true: windlass-cni does not masquerade; the agent does for traffic \
                 leaving the cluster",
            ));
        }
        if let Some(vlan) = raw.vlan.filter(|v| *v != 0) {
            return Err(unsupported(format!(
                "vlan: {vlan}: VLAN tagging is not supported"
            )));
        }
        let ipam = raw.ipam.ok_or_else(|| invalid("ipam is required"))?;
        let ipam = ipam_conf(ipam, &name, raw.is_default_gateway)?;
        let runtime_config = raw.runtime_config.unwrap_or_default();
        let dns = match raw.dns {
            Some(dns) if !dns.is_empty() => dns,
            _ => runtime_config.dns.clone().unwrap_or_default(),
        };
        Ok(NetConf {
            cni_version: version,
            name,
            bridge,
            mtu: raw.mtu,
            is_gateway: raw.is_gateway.unwrap_or(true),
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
            promisc_mode: raw.promisc_mode.unwrap_or(false),
            ipam,
            dns,
            prev_result: raw.prev_result,
            runtime_config,
            valid_attachments: raw.valid_attachments,
        })
    }
}

fn ipam_conf(
    raw: RawIpam,
    network: &str,
    is_default_gateway: Option<bool>,
) -> Result<IpamConf, CniError> {
    match raw.kind.as_deref() {
        Some("windlass") => {}
        Some(other) => {
            return Err(invalid(format!(
                "ipam.type {other:?} is not supported: windlass-cni has its IPAM built in \
                 (\"type\": \"windlass\")"
            )));
        }
        None => return Err(invalid("ipam.type is required (\"windlass\")")),
    }
    let (subnet_text, range_start, range_end, gateway, field) = match (raw.subnet, raw.ranges) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "ipam.subnet and ipam.ranges are exclusive; use one",
            ));
        }
        (Some(subnet), None) => (
            subnet,
            raw.range_start,
            raw.range_end,
            raw.gateway,
            "ipam.subnet",
        ),
        (None, Some(ranges)) => {
            let mut sets = ranges.into_iter();
            let (Some(set), None) = (sets.next(), sets.next()) else {
                return Err(unsupported(
                    "ipam.ranges: exactly one range set is supported (IPv4 only for now)",
                ));
            };
            let mut set = set.into_iter();
            let (Some(range), None) = (set.next(), set.next()) else {
                return Err(unsupported(
                    "ipam.ranges[0]: exactly one range per set is supported",
                ));
            };
            let subnet = range
                .subnet
                .ok_or_else(|| invalid("ipam.ranges[0][0].subnet is required"))?;
            (
                subnet,
                range.range_start,
                range.range_end,
                range.gateway,
                "ipam.ranges[0][0].subnet",
            )
        }
        (None, None) => return Err(invalid("ipam.subnet is required")),
    };
    parse_cidr(field, &subnet_text)?;
    let subnet: Subnet = subnet_text
        .parse()
        .map_err(|e: IpamError| invalid(format!("{field}: {e}")))?;
    let data_dir = raw
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
        .join(network);
    let pool =
        Pool::new(subnet, range_start, range_end, gateway, data_dir).map_err(|e| match e {
            IpamError::InvalidConfig(text) => invalid(format!("ipam: {text}")),
            other => invalid(format!("ipam: {other}")),
        })?;
    let mut routes = Vec::new();
    for (i, route) in raw.routes.unwrap_or_default().into_iter().enumerate() {
        let (dst, prefix) = parse_cidr(&format!("ipam.routes[{i}].dst"), &route.dst)?;
        let gw = match route.gw {
            Some(gw) => Some(gw.parse::<Ipv4Addr>().map_err(|_| {
                invalid(format!("ipam.routes[{i}].gw {gw:?} is not an IPv4 address"))
            })?),
            None => None,
        };
        routes.push((dst, prefix, gw));
    }
    let has_default = routes.iter().any(|(_, prefix, _)| *prefix == 0);
    if (routes.is_empty() || is_default_gateway == Some(true)) && !has_default {
        routes.push((Ipv4Addr::UNSPECIFIED, 0, None));
    }
    Ok(IpamConf { pool, routes })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(text: &str) -> Result<NetConf, CniError> {
        let value = decode(text.as_bytes())?;
        let version = version_of(&value)?;
        NetConf::from_value(value, version)
    }

    const MINIMAL: &str = r#"{"cniVersion":"1.0.0","name":"wl","type":"windlass-cni",
        "ipam":{"type":"windlass","subnet":"10.244.1.0/24","dataDir":"/tmp/x"}}"#;

    #[test]
    fn defaults_follow_the_reference_plugins() {
        let conf = parse(MINIMAL).expect("valid");
        assert_eq!(conf.bridge, "wl0");
        assert!(conf.is_gateway && conf.hairpin_mode && !conf.promisc_mode);
        assert_eq!(conf.ipam.pool.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(conf.ipam.pool.data_dir, PathBuf::from("/tmp/x/wl"));
        assert_eq!(conf.ipam.routes, vec![(Ipv4Addr::UNSPECIFIED, 0, None)]);
    }

    #[test]
    fn errors_carry_the_spec_codes_and_name_the_field() {
        let code = |text: &str| parse(text).expect_err(text).code;
        assert_eq!(code("{not json"), CniError::DECODE);
        assert_eq!(code(&MINIMAL.replace("1.0.0", "2.0.0")), 1);
        assert_eq!(
            code(r#"{"name":"wl","ipam":{}}"#),
            1,
            "no cniVersion is 0.1.0"
        );
        let err = parse(&MINIMAL.replace(r#""subnet":"10.244.1.0/24","#, "")).expect_err("x");
        assert_eq!(err.code, CniError::INVALID_CONFIG);
        assert!(err.details.contains("ipam.subnet"), "{err:?}");
        let err = parse(&MINIMAL.replace(r#""name":"wl","#, r#""name":"wl","mtu":"big","#))
            .expect_err("x");
        assert_eq!(err.code, CniError::INVALID_CONFIG);
        assert!(err.details.starts_with("mtu"), "{err:?}");
        let err = parse(&MINIMAL.replace(r#""name":"wl","#, r#""name":"wl","ipMasq":true,"#))
            .expect_err("x");
        assert_eq!(err.code, CniError::UNSUPPORTED_FIELD);
        assert!(err.details.contains("ipMasq"), "{err:?}");
        assert_eq!(
            code(&MINIMAL.replace("10.244.1.0/24", "fd00::/64")),
            CniError::UNSUPPORTED_FIELD
        );
        assert_eq!(code(&MINIMAL.replace("\"windlass\"", "\"host-local\"")), 7);
        assert_eq!(code(&MINIMAL.replace("\"wl\"", "\"../etc\"")), 7);
    }

    #[test]
    fn ranges_are_read_like_host_local() {
        let conf = parse(
            r#"{"cniVersion":"0.4.0","name":"wl","ipam":{"type":"windlass","ranges":[[{
                "subnet":"10.244.2.0/24","rangeStart":"10.244.2.10","rangeEnd":"10.244.2.20"}]],
                "routes":[{"dst":"10.96.0.0/12"}]}}"#,
        )
        .expect("valid");
        assert_eq!(conf.ipam.pool.range_start, Ipv4Addr::new(10, 244, 2, 10));
        assert_eq!(
            conf.ipam.routes.len(),
            1,
            "explicit routes replace the default"
        );
    }

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn environment_is_checked_per_command() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p;FOO=bar"),
        ];
        let parsed = env(&full).expect("valid");
        assert_eq!(parsed.args.pod_name.as_deref(), Some("p"));
        for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let vars: Vec<_> = full
                .iter()
                .filter(|(k, _)| *k != missing)
                .copied()
                .collect();
            let err = env(&vars).expect_err(missing);
            assert_eq!(err.code, CniError::INVALID_ENV, "{missing}");
        }
        let mut del: Vec<_> = full
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .copied()
            .collect();
        del[0] = ("CNI_COMMAND", "DEL");
        assert!(env(&del).is_ok(), "DEL does not need CNI_NETNS");
        assert_eq!(
            env(&[("CNI_COMMAND", "GC")]).expect("gc").command,
            Command::Gc
        );
        let mut bad = full;
        bad[1] = ("CNI_CONTAINERID", "-x");
        assert_eq!(env(&bad).expect_err("id").code, CniError::INVALID_ENV);
        bad = full;
        bad[4] = ("CNI_ARGS", "FOO=bar");
        assert_eq!(env(&bad).expect_err("args").code, CniError::INVALID_ENV);
        bad[3] = ("CNI_IFNAME", "a/b");
        assert_eq!(env(&bad).expect_err("ifname").code, CniError::INVALID_ENV);
    }
}
