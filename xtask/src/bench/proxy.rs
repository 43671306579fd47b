//! `cargo xtask bench proxy`: Windlass's eBPF service proxy against a kube-proxy-shaped
//! iptables ruleset, side by side in one run on one topology (issue 7).
//!
//! Topology (all namespaces made by the bench, prefix `wlb<hex>`): a node namespace `N` (uplink
//! with 192.0.2.1 and no default route, forwarding on, as `bench kubelet` makes it), a client
//! namespace `C` and a server namespace `S`, each behind a veth into `N` (`10.250.1.2/24` via
//! `10.250.1.1`, and `10.250.2.2/24` + `10.250.2.3/24` via `10.250.2.1`): every packet between
//! them is routed by the node, as a pod's would be. `S` runs `iperf3 -s` and a small TCP
//! server (one thread of this process: read one request, write one reply, close). Clients
//! (`iperf3 -c`, and this xtask re-executed as `bench proxy-client`: connect, one small request,
//! read the reply to EOF, close, in a loop, one connection at a time) run in `C` and in the cgroup
//! v2 directory `<cgroup-root>/bench-client`, so the agent's socket hooks see them as they see
//! pods. `C` has `net.ipv4.tcp_timestamps=2` and a wide port range (REFERENCE.md's TIME_WAIT
//! pitfall).
//!
//! Services: `iperf` (ClusterIP 10.96.0.10:5201 → 10.250.2.2:5201) and `echo` (10.96.0.20:80 →
//! 10.250.2.2:8080 and 10.250.2.3:8080), plus "other" services that are never connected to.
//!
//! Block 1, before any Windlass program was ever attached:
//! - direct: iperf3 and connection rate to the server's own address with no rule at all (no
//!   nat table in `N`, so no conntrack either);
//! - iptables: for 1, 1,000 and 10,000 other services (`iperf` + fillers, 2 endpoints each) with
//!   `echo` last in KUBE-SERVICES (the worst case of the linear walk), the ruleset that
//!   [`kube_proxy_ruleset`] writes is loaded into `N`'s nat table with one `iptables-restore -w 5
//!   --counters` that replaces the table (timed; REFERENCE.md's baseline was measured this way),
//!   then, up to 1,000 other services by default (`WINDLASS_BENCH_PROXY_NOFLUSH_MAX`), again
//!   without the jump rules with kube-proxy's own `--noflush` (timed: the resync kube-proxy does
//!   on every change; iptables-nft 1.8.9 does it in quadratic time, about 90 s at 10,000
//!   services on this machine kind); then the connection rate through `echo`'s VIP, and at the
//!   first size iperf3 through `iperf`'s VIP. `N`'s conntrack TIME_WAIT timeout is
//!   lowered to 2 s so the runs do not fill the conntrack table (per-connection cost unchanged).
//!   Afterwards `N`'s nat table is deleted, which unhooks NAT and conntrack again.
//!
//! Block 2, Windlass (skipped with the reason when `windlass agent` has no `--bpf-root` yet): a
//! release `windlass server` (SQLite, controllers on) and a release `windlass agent` in `N`
//! (through a loopback forwarder, as `bench kubelet` runs it) with `--bpf-root
//! /sys/fs/bpf/<prefix>`, `--service-cidr 10.96.0.0/16`, `--cgroup-root /<prefix>`. Services are
//! selector-less, with hand-made EndpointSlices. The datapath is read from the pinned
//! `wl_lb_services` map (slot 0 of each frontend, internal scope: its backend count), with raw
//! `bpf(2)` calls. Measured: iperf3 and connection rate through the VIPs (and direct again with
//! the programs attached); the rate with 1,000 other services (fillers, then deleted); 10,000
//! services × 10 endpoints created at once over HTTP/2 (200 in flight) and the time until the
//! map holds all of them; the rate with those 10,000 services installed; 200 endpoint changes
//! (EndpointSlice merge patches on 100 services: drop the last endpoint, then put it back), each
//! timed from sending the patch to the map showing the new backend count; agent RSS. The
//! throughput target compares the ClusterIP with the direct runs interleaved with it.
//!
//! Everything made (namespaces and with them every rule, pin directory, cgroups, processes) is
//! removed at the end, also after an error, a panic or Ctrl-C. Writes
//! `target/bench/proxy.{json,md}` and keeps the agent's log as `target/bench/proxy-agent.log`.
//!
//! Knobs: `WINDLASS_BENCH_PROXY_SKIP_BUILD=1` (reuse the release binaries),
//! `WINDLASS_BENCH_PROXY_SECONDS` (per connection-rate run, default 3),
//! `WINDLASS_BENCH_PROXY_IPERF_SECONDS` (default 5), `WINDLASS_BENCH_PROXY_RUNS` (repetitions,
//! default 5; medians are reported), `WINDLASS_BENCH_PROXY_SIZES` (default `1,1000,10000`),
//! `WINDLASS_BENCH_PROXY_SERVICES` (block 2's bulk services, default 10000),
//! `WINDLASS_BENCH_PROXY_CHANGES` (services whose endpoints change, default 100),
//! `WINDLASS_BENCH_PROXY_WINDLASS=0` (block 1 only), `WINDLASS_BENCH_PROXY_PROFILE=debug`
//! (the debug binaries: a functional check, not figures).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use windlass_cni::netns::NetNs;

use self::bpf::PinnedMap;
use super::apiserver::{HttpsClient, Server, client, create_namespace, request, start};
use super::node::{Forwarder, remove_cgroups};
use super::{env_or, percentile, random_hex, round, status_kib};
use crate::paths;

const NAMESPACE: &str = "bench";
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The node's address on its (otherwise unused) uplink.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT_GW: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 2);
const SERVER_GW: Ipv4Addr = Ipv4Addr::new(10, 250, 2, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 2, 2);
/// A second address of the server, so `echo` has two endpoints as the ruleset's services do.
const SERVER_IP2: Ipv4Addr = Ipv4Addr::new(10, 250, 2, 3);
const IPERF_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const IPERF_PORT: u16 = 5201;
const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const ECHO_SERVICE_PORT: u16 = 80;
const ECHO_PORT: u16 = 8080;
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const REPLY: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
const METRICS_ADDRESS: &str = "127.0.0.1:10249";
/// Endpoints per service in block 2's bulk creation.
const BULK_ENDPOINTS: usize = 10;
/// Concurrent creates in flight.
const IN_FLIGHT: usize = 200;
const PATIENCE: Duration = Duration::from_secs(120);
/// Frontend scope of traffic from the node and its pods (`enum wl_scope` in ebpf/proxy.h).
const SCOPE_INTERNAL: u8 = 1;
const IPPROTO_TCP: u8 = 6;

// Targets from the issue.
const TARGET_THROUGHPUT_RATIO: f64 = 0.98;
const TARGET_RATE_DROP: f64 = 0.05;
const TARGET_PROGRAMMED_S: f64 = 2.0;
const TARGET_CHANGE_P99_MS: f64 = 50.0;
const TARGET_RSS_MIB: f64 = 80.0;

/// Set by the signal thread; long loops check it between steps.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

// ---------------------------------------------------------------------------------------------
// The kube-proxy ruleset.

/// One service port as the benchmark installs it (selector-less, TCP, one EndpointSlice).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServicePort {
    name: String,
    port_name: String,
    vip: Ipv4Addr,
    port: u16,
    target_port: u16,
    endpoints: Vec<Ipv4Addr>,
}

impl ServicePort {
    /// kube-proxy's `ServicePortName.String()`: `namespace/name:port`.
    fn port_name_string(&self) -> String {
        format!("{NAMESPACE}/{}:{}", self.name, self.port_name)
    }
}

/// RFC 4648 base32 of the first 10 bytes of SHA-256(`input`): 16 characters, as kube-proxy's
/// `portProtoHash` and `servicePortEndpointChainName` cut them.
fn chain_hash(input: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    let bytes = &digest.as_ref()[..10];
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut out = String::with_capacity(16);
    for &b in bytes {
        bits = (bits << 8) | u64::from(b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            out.push(char::from(ALPHABET[((bits >> nbits) & 31) as usize]));
        }
    }
    out
}

/// The nat table as kube-proxy's iptables mode writes it for `services`, in the order given,
/// as one `iptables-restore --noflush` input: every KUBE-* chain declared (which flushes it),
/// the masquerade chains, per service a KUBE-SERVICES match jumping to KUBE-SVC-<hash>, which
/// picks an endpoint with `-m statistic --mode random --probability 1/(n-i)` (the last without)
/// and jumps to KUBE-SEP-<hash>, which marks hairpin traffic for masquerade and DNATs; the
/// NodePort catch-all last. With `jumps`, the rules that send PREROUTING and OUTPUT to
/// KUBE-SERVICES and POSTROUTING to KUBE-POSTROUTING too (kube-proxy ensures those apart, once;
/// a resync leaves them out).
fn kube_proxy_ruleset(services: &[ServicePort], jumps: bool) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{chain} - [0:0]");
    }
    if jumps {
        rules.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        );
    }
    rules.push_str(
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    let mut per_service = String::new();
    for svc in services {
        let spn = svc.port_name_string();
        let svc_chain = format!("KUBE-SVC-{}", chain_hash(&format!("{spn}tcp")));
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} -j {svc_chain}",
            svc.vip, svc.port
        );
        let n = svc.endpoints.len();
        for (i, ip) in svc.endpoints.iter().enumerate() {
            let endpoint = format!("{ip}:{}", svc.target_port);
            let sep_chain = format!("KUBE-SEP-{}", chain_hash(&format!("{spn}tcp{endpoint}")));
            let _ = writeln!(chains, ":{sep_chain} - [0:0]");
            let statistic = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                rules,
                "-A {svc_chain} -m comment --comment \"{spn} -> {endpoint}\"{statistic} -j {sep_chain}"
            );
            let _ = writeln!(
                per_service,
                "-A {sep_chain} -m comment --comment {spn} -s {ip}/32 -j KUBE-MARK-MASQ\n\
                 -A {sep_chain} -m comment --comment {spn} -m tcp -p tcp -j DNAT --to-destination {endpoint}"
            );
        }
    }
    rules.push_str(&per_service);
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    format!("*nat\n{chains}{rules}COMMIT\n")
}

// ---------------------------------------------------------------------------------------------
// The services.

fn iperf_service() -> ServicePort {
    ServicePort {
        name: "iperf".into(),
        port_name: "iperf".into(),
        vip: IPERF_VIP,
        port: IPERF_PORT,
        target_port: IPERF_PORT,
        endpoints: vec![SERVER_IP],
    }
}

fn echo_service() -> ServicePort {
    ServicePort {
        name: "echo".into(),
        port_name: "http".into(),
        vip: ECHO_VIP,
        port: ECHO_SERVICE_PORT,
        target_port: ECHO_PORT,
        endpoints: vec![SERVER_IP, SERVER_IP2],
    }
}

/// A filler service with 2 endpoints (the baseline's shape), never connected to.
fn filler(i: usize) -> ServicePort {
    let (hi, lo) = ((i / 256) as u8, (i % 256) as u8);
    ServicePort {
        name: format!("filler-{i:05}"),
        port_name: "http".into(),
        vip: Ipv4Addr::new(10, 96, 64 + hi, lo),
        port: 80,
        target_port: 8080,
        endpoints: vec![
            Ipv4Addr::new(10, 252, hi, lo),
            Ipv4Addr::new(10, 253, hi, lo),
        ],
    }
}

/// Block 2's bulk services: `BULK_ENDPOINTS` endpoints each.
fn bulk(i: usize) -> ServicePort {
    let (hi, lo) = ((i / 256) as u8, (i % 256) as u8);
    ServicePort {
        name: format!("svc-{i:05}"),
        port_name: "http".into(),
        vip: Ipv4Addr::new(10, 96, 16 + hi, lo),
        port: 80,
        target_port: 8080,
        endpoints: (0..BULK_ENDPOINTS)
            .map(|j| Ipv4Addr::new(172, 16 + j as u8, hi, lo))
            .collect(),
    }
}

/// The ruleset's services at `others` other services: `iperf`, fillers, `echo` last.
fn ruleset_services(others: usize) -> Vec<ServicePort> {
    let mut services = vec![iperf_service()];
    services.extend((0..others.saturating_sub(1)).map(filler));
    services.push(echo_service());
    services
}

fn service_json(svc: &ServicePort) -> Value {
    json!({ "metadata": { "name": svc.name },
            "spec": { "clusterIP": svc.vip.to_string(), "type": "ClusterIP",
                      "ports": [{ "name": svc.port_name, "port": svc.port, "protocol": "TCP",
                                  "targetPort": svc.target_port }] } })
}

fn endpoints_json(addresses: &[Ipv4Addr]) -> Value {
    Value::Array(
        addresses
            .iter()
            .map(|ip| {
                json!({ "addresses": [ip.to_string()],
                        "conditions": { "ready": true, "serving": true, "terminating": false } })
            })
            .collect(),
    )
}

fn slice_json(svc: &ServicePort) -> Value {
    json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": format!("{}-bench", svc.name),
                          "labels": { "kubernetes.io/service-name": svc.name,
                                      "endpointslice.kubernetes.io/managed-by": "bench.windlass.dev" } },
            "addressType": "IPv4",
            "ports": [{ "name": svc.port_name, "port": svc.target_port, "protocol": "TCP" }],
            "endpoints": endpoints_json(&svc.endpoints) })
}

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices";
const SERVICES: &str = "/api/v1/namespaces/bench/services";

/// Creates the Service and its EndpointSlice; returns when the slice's create returned.
async fn create_service(client: &HttpsClient, server: &Server, svc: &ServicePort) -> Result<()> {
    let (code, body) = request(client, server, "POST", SERVICES, Some(&service_json(svc))).await?;
    if code != 201 {
        bail!(
            "create service {}: {code} {}",
            svc.name,
            String::from_utf8_lossy(&body)
        );
    }
    let (code, body) = request(client, server, "POST", SLICES, Some(&slice_json(svc))).await?;
    if code != 201 {
        bail!(
            "create endpointslice of {}: {code} {}",
            svc.name,
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

async fn delete_service(client: &HttpsClient, server: &Server, svc: &ServicePort) -> Result<()> {
    for path in [
        format!("{SLICES}/{}-bench", svc.name),
        format!("{SERVICES}/{}", svc.name),
    ] {
        let (code, body) = request(client, server, "DELETE", &path, None).await?;
        if !matches!(code, 200 | 202 | 404) {
            bail!("delete {path}: {code} {}", String::from_utf8_lossy(&body));
        }
    }
    Ok(())
}

/// Creates (or deletes) `services` from `IN_FLIGHT` concurrent tasks over the one HTTP/2
/// connection; returns when each one's last request returned, by index.
async fn bulk_apply(
    client: &HttpsClient,
    server: &Arc<Server>,
    services: Arc<Vec<ServicePort>>,
    delete: bool,
) -> Result<Vec<Instant>> {
    let next = Arc::new(AtomicUsize::new(0));
    let done: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; services.len()]));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT.min(services.len()) {
        let (client, server, services, next, done) = (
            client.clone(),
            Arc::clone(server),
            Arc::clone(&services),
            Arc::clone(&next),
            Arc::clone(&done),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(svc) = services.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                if delete {
                    delete_service(&client, &server, svc).await?;
                } else {
                    create_service(&client, &server, svc).await?;
                }
                done.lock().map_err(|_| anyhow!("poisoned"))?[i] = Some(Instant::now());
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let done = done.lock().map_err(|_| anyhow!("poisoned"))?;
    done.iter()
        .map(|t| t.context("a create did not finish"))
        .collect()
}

/// Replaces the endpoints of `svc`'s slice with `addresses` (a JSON merge patch).
async fn patch_endpoints(
    client: &HttpsClient,
    server: &Server,
    svc: &ServicePort,
    addresses: &[Ipv4Addr],
) -> Result<()> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let body = json!({ "endpoints": endpoints_json(addresses) });
    let req = hyper::Request::builder()
        .method("PATCH")
        .uri(format!("{}{SLICES}/{}-bench", server.url, svc.name))
        .header("Authorization", format!("Bearer {}", server.token))
        .header("Content-Type", "application/merge-patch+json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = client.request(req).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    if status != 200 {
        bail!(
            "patch endpointslice of {}: {status} {}",
            svc.name,
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The datapath, read from the pinned map.

#[allow(unsafe_code)]
mod bpf {
    //! Just enough of `bpf(2)` to open a pinned map and look keys up.

    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use nix::libc;

    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

    /// `union bpf_attr` is at most this big for the commands used here; the rest stays zero.
    type Attr = [u64; 16];

    fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a zeroed, 8-byte aligned buffer of the size passed, laid out as
        // `union bpf_attr` for `cmd`; every pointer in it points to memory that outlives the
        // call and has the size the kernel will read or write (checked by the callers).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of::<Attr>(),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// A pinned BPF map opened read-only by path.
    #[derive(Debug)]
    pub(super) struct PinnedMap {
        fd: OwnedFd,
        pub(super) key_size: usize,
        pub(super) value_size: usize,
        pub(super) max_entries: u32,
    }

    impl PinnedMap {
        pub(super) fn open(path: &Path) -> io::Result<PinnedMap> {
            let c = CString::new(path.as_os_str().as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let mut attr: Attr = [0; 16];
            // struct { u64 pathname; u32 bpf_fd; u32 file_flags = BPF_F_RDONLY (1 << 3); }
            attr[0] = c.as_ptr() as u64;
            attr[1] = (1u64 << 3) << 32;
            let fd = bpf(BPF_OBJ_GET, &mut attr)?;
            let fd = i32::try_from(fd).map_err(|_| io::Error::other("bad fd"))?;
            // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // struct bpf_map_info { u32 type, id, key_size, value_size, max_entries, ... }
            let mut info = [0u32; 32];
            let mut attr: Attr = [0; 16];
            // struct { u32 bpf_fd; u32 info_len; u64 info; }
            attr[0] =
                u64::from(fd.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
            attr[1] = info.as_mut_ptr() as u64;
            bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
            Ok(PinnedMap {
                fd,
                key_size: info[2] as usize,
                value_size: info[3] as usize,
                max_entries: info[4],
            })
        }

        /// Looks `key` up; fills `value` and returns true when present.
        pub(super) fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
            if key.len() != self.key_size || value.len() != self.value_size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "map has {}-byte keys and {}-byte values, not {} and {}",
                        self.key_size,
                        self.value_size,
                        key.len(),
                        value.len()
                    ),
                ));
            }
            let mut attr: Attr = [0; 16];
            // struct { u32 map_fd; u64 key; u64 value; u64 flags; } (key at offset 8)
            attr[0] = u64::from(self.fd.as_raw_fd() as u32);
            attr[1] = key.as_ptr() as u64;
            attr[2] = value.as_mut_ptr() as u64;
            match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
                Ok(_) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// `struct wl_svc_key` of ebpf/proxy.h for slot 0 of a ClusterIP frontend (internal scope).
fn frontend_key(vip: Ipv4Addr, port: u16) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&vip.octets());
    key[4..6].copy_from_slice(&port.to_be_bytes());
    // slot (u16, host order) = 0 at 6..8
    key[8] = IPPROTO_TCP;
    key[9] = SCOPE_INTERNAL;
    key
}

/// The backend count of `svc`'s frontend in the datapath, `None` when it has no frontend.
fn programmed_count(map: &PinnedMap, svc: &ServicePort) -> Result<Option<u16>> {
    let mut value = [0u8; 16];
    let found = map
        .lookup(&frontend_key(svc.vip, svc.port), &mut value)
        .context("look a frontend up in wl_lb_services")?;
    // struct wl_svc_value { u32 backend_id; u16 count; ... }
    Ok(found.then(|| u16::from_le_bytes([value[4], value[5]])))
}

/// Waits until every service's frontend has the backend count `want` gives (`None`: absent);
/// returns the instant each one first did (as seen by a pass over the ones still missing). A
/// pass over many services costs CPU the agent would use on this 2-core machine, so the pause
/// between passes is three times the pass (at least 1 ms, at most 20 ms): the poller takes at
/// most a quarter of a core.
fn wait_datapath(
    map: &PinnedMap,
    services: &[ServicePort],
    want: impl Fn(&ServicePort) -> Option<u16>,
    patience: Duration,
    abandon: &AtomicBool,
) -> Result<Vec<Instant>> {
    let deadline = Instant::now() + patience;
    let mut seen: Vec<Option<Instant>> = vec![None; services.len()];
    let mut pending: Vec<usize> = (0..services.len()).collect();
    while !pending.is_empty() {
        let pass = Instant::now();
        let mut left = Vec::with_capacity(pending.len());
        for i in pending {
            if programmed_count(map, &services[i])? == want(&services[i]) {
                seen[i] = Some(Instant::now());
            } else {
                left.push(i);
            }
        }
        pending = left;
        if pending.is_empty() {
            break;
        }
        check_interrupted()?;
        if abandon.load(Ordering::Relaxed) {
            bail!("abandoned");
        }
        if Instant::now() > deadline {
            bail!(
                "after {} s, {} of {} services are not as expected in the datapath (first: {})",
                patience.as_secs(),
                pending.len(),
                services.len(),
                services[pending[0]].name
            );
        }
        std::thread::sleep(
            (pass.elapsed() * 3).clamp(Duration::from_millis(1), Duration::from_millis(20)),
        );
    }
    Ok(seen.into_iter().flatten().collect())
}

// ---------------------------------------------------------------------------------------------
// Processes and namespaces.

/// The TCP server in the server namespace: one request, one reply, close.
struct EchoServer {
    stop: Arc<AtomicBool>,
    ns: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start(ns: &NetNs) -> Result<EchoServer> {
        let listener = ns
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT)))?
            .context("listen in the server namespace")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 512];
                let mut got = 0;
                while got < buf.len() {
                    match stream.read(&mut buf[got..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                    if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = stream.write_all(REPLY);
                        break;
                    }
                }
            }
        });
        Ok(EchoServer {
            stop,
            ns: ns.path().to_path_buf(),
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(ns) = NetNs::open(&self.ns) {
            let _ = ns.run(|| TcpStream::connect((Ipv4Addr::LOCALHOST, ECHO_PORT)));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child killed (and reaped) on drop.
struct Killed(Option<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` in `ns`, feeding it `stdin`; returns its output and wall time.
fn run_in(ns: &NetNs, command: &mut Command, stdin: Option<&[u8]>) -> Result<(Output, Duration)> {
    let shown = format!("{command:?}");
    ns.run(|| -> Result<(Output, Duration)> {
        let started = Instant::now();
        let mut child = command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {shown}"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input)
                .with_context(|| format!("write to {shown}"))?;
        }
        let output = child.wait_with_output()?;
        Ok((output, started.elapsed()))
    })?
}

/// Like [`run_in`], failing (with its stderr) when the command does.
fn run_ok(ns: &NetNs, command: &mut Command, stdin: Option<&[u8]>) -> Result<(Output, Duration)> {
    let shown = format!("{command:?}");
    let (output, took) = run_in(ns, command, stdin)?;
    if !output.status.success() {
        bail!(
            "{shown} in {} failed ({}): {}",
            ns.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok((output, took))
}

fn ip(ns: &NetNs, args: &str) -> Result<()> {
    run_ok(ns, Command::new("ip").args(args.split_whitespace()), None).map(|_| ())
}

/// The benchmark's namespaces; dropping removes them, with every link, route and rule.
struct Topology {
    client: NetNs,
    server: NetNs,
    node: NetNs,
}

impl Topology {
    fn create(prefix: &str) -> Result<Topology> {
        let topology = Topology {
            node: NetNs::create(&format!("{prefix}-node"))?,
            client: NetNs::create(&format!("{prefix}-client"))?,
            server: NetNs::create(&format!("{prefix}-server"))?,
        };
        let (n, c, s) = (&topology.node, &topology.client, &topology.server);
        for ns in [n, c, s] {
            ip(ns, "link set lo up")?;
        }
        ip(
            n,
            &format!("link add {prefix}up type veth peer name {prefix}pe"),
        )?;
        ip(n, &format!("link set {prefix}pe up"))?;
        ip(n, &format!("link set {prefix}up up"))?;
        ip(n, &format!("addr add {NODE_IP}/24 dev {prefix}up"))?;
        for (ns, link, gw, addrs) in [
            (c, format!("{prefix}c"), CLIENT_GW, vec![CLIENT_IP]),
            (
                s,
                format!("{prefix}s"),
                SERVER_GW,
                vec![SERVER_IP, SERVER_IP2],
            ),
        ] {
            ip(
                n,
                &format!(
                    "link add {link} type veth peer name eth0 netns {}",
                    ns.name()
                ),
            )?;
            ip(n, &format!("addr add {gw}/24 dev {link}"))?;
            ip(n, &format!("link set {link} up"))?;
            for a in addrs {
                ip(ns, &format!("addr add {a}/24 dev eth0"))?;
            }
            ip(ns, "link set eth0 up")?;
            ip(ns, &format!("route add default via {gw}"))?;
        }
        n.sysctl("net/ipv4/ip_forward", "1")?;
        // REFERENCE.md's pitfall: no per-destination timestamp offsets for the client.
        c.sysctl("net/ipv4/tcp_timestamps", "2")?;
        c.sysctl("net/ipv4/ip_local_port_range", "1024 65535")?;
        Ok(topology)
    }

    /// Deletes the node's nat table (all the ruleset's rules and chains), which also unhooks
    /// NAT and conntrack from the node again.
    fn clear_nat(&self) -> Result<()> {
        let (listed, _) = run_in(
            &self.node,
            Command::new("nft").args(["list", "table", "ip", "nat"]),
            None,
        )?;
        if listed.status.success() {
            run_ok(
                &self.node,
                Command::new("nft").args(["delete", "table", "ip", "nat"]),
                None,
            )?;
        }
        Ok(())
    }

    /// The nft tables in the node namespace (to check that none is left after block 1).
    fn node_tables(&self) -> Result<String> {
        let (out, _) = run_ok(
            &self.node,
            Command::new("nft").args(["list", "tables"]),
            None,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Loads a ruleset into the node with one `iptables-restore`; returns its time. Without
    /// `noflush` the nat table is replaced as a whole; with it, only the chains the input
    /// declares are (kube-proxy's `--noflush`).
    fn restore(&self, ruleset: &str, noflush: bool) -> Result<Duration> {
        let mut command = Command::new("iptables-restore");
        command.args(["-w", "5", "--counters"]);
        if noflush {
            command.arg("--noflush");
        }
        let (_, took) = run_ok(&self.node, &mut command, Some(ruleset.as_bytes()))?;
        Ok(took)
    }
}

/// The client side: processes in the client namespace and in the agent's cgroup v2 subtree.
struct Clients<'a> {
    topology: &'a Topology,
    /// `<v2 root>/<cgroup-root>/bench-client/cgroup.procs`.
    procs: PathBuf,
    exe: PathBuf,
    conn_seconds: f64,
    iperf_seconds: u64,
}

impl Clients<'_> {
    /// A command that first moves itself into the client cgroup, then execs `program`.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("echo 0 > \"$0\" && exec \"$@\"")
            .arg(&self.procs)
            .arg(program);
        command
    }

    /// TCP throughput of one iperf3 run to `addr`, in Gbit/s (receiver side).
    fn iperf(&self, addr: Ipv4Addr) -> Result<f64> {
        check_interrupted()?;
        let mut command = self.command(Path::new("iperf3"));
        command.args([
            "-c",
            &addr.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &self.iperf_seconds.to_string(),
            "-O",
            "1",
            "-J",
        ]);
        let (out, _) = run_ok(&self.topology.client, &mut command, None)
            .with_context(|| format!("iperf3 to {addr}"))?;
        let report: Value = serde_json::from_slice(&out.stdout).context("parse iperf3 -J")?;
        report
            .pointer("/end/sum_received/bits_per_second")
            .and_then(Value::as_f64)
            .map(|bps| bps / 1e9)
            .with_context(|| format!("iperf3 to {addr} reported no throughput: {report}"))
    }

    /// New connections per second to `addr` (one client, one connection at a time).
    fn rate(&self, addr: SocketAddrV4) -> Result<f64> {
        check_interrupted()?;
        let mut command = self.command(&self.exe);
        command
            .args(["bench", "proxy-client"])
            .env(CLIENT_ENV, format!("{addr} {} {}", self.conn_seconds, 0.5));
        let (out, _) = run_ok(&self.topology.client, &mut command, None)
            .with_context(|| format!("connection-rate client to {addr}"))?;
        let report: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parse {:?}", String::from_utf8_lossy(&out.stdout)))?;
        let n = report["connections"].as_f64().unwrap_or(0.0);
        let secs = report["seconds"].as_f64().unwrap_or(f64::NAN);
        if n == 0.0 {
            bail!("no connection to {addr} succeeded: {report}");
        }
        Ok(n / secs)
    }

    /// `runs` rate measurements to `addr`: the runs and their median.
    fn rates(&self, addr: SocketAddrV4, runs: usize) -> Result<Value> {
        let samples: Vec<f64> = (0..runs).map(|_| self.rate(addr)).collect::<Result<_>>()?;
        Ok(json!({
            "runs": samples.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "median": median(&samples).round(),
        }))
    }
}

/// iperf3 runs interleaved between `a` and `b`; their runs and medians.
fn iperf_pair(
    clients: &Clients<'_>,
    a: Ipv4Addr,
    b: Ipv4Addr,
    runs: usize,
) -> Result<(Value, Value)> {
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    // The order alternates, so neither side always runs first.
    for i in 0..runs {
        if i % 2 == 0 {
            sa.push(clients.iperf(a)?);
            sb.push(clients.iperf(b)?);
        } else {
            sb.push(clients.iperf(b)?);
            sa.push(clients.iperf(a)?);
        }
    }
    let summary = |s: &[f64]| json!({ "runs": s.iter().map(|g| round(*g, 2)).collect::<Vec<_>>(), "median": round(median(s), 2) });
    Ok((summary(&sa), summary(&sb)))
}

/// Env var carrying `ADDR:PORT SECONDS WARMUP` to `bench proxy-client`.
const CLIENT_ENV: &str = "WINDLASS_BENCH_PROXY_CLIENT";

/// `cargo xtask bench proxy-client` (run by the benchmark, not by hand): connects to the
/// address in `WINDLASS_BENCH_PROXY_CLIENT` over and over, one small request and its reply per
/// connection, for a warm-up and then the measured seconds; prints `{"connections", "errors",
/// "seconds"}`.
pub fn client_main() -> Result<()> {
    let spec = std::env::var(CLIENT_ENV).with_context(|| format!("{CLIENT_ENV} is not set"))?;
    let mut parts = spec.split_whitespace();
    let addr: SocketAddrV4 = parts.next().unwrap_or_default().parse()?;
    let seconds: f64 = parts.next().unwrap_or("3").parse()?;
    let warmup: f64 = parts.next().unwrap_or("0.5").parse()?;
    let one = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(addr)?;
        stream.write_all(REQUEST)?;
        let mut buf = [0u8; 128];
        let mut got = 0;
        loop {
            let n = stream.read(&mut buf[got..])?;
            if n == 0 || got + n == buf.len() {
                got += n;
                break;
            }
            got += n;
        }
        Ok(buf[..got].starts_with(b"HTTP/1.0 200"))
    };
    let mut errors = 0u64;
    let mut last_error = String::new();
    let mut phase = |secs: f64| -> (u64, f64) {
        let started = Instant::now();
        let mut ok = 0u64;
        while started.elapsed().as_secs_f64() < secs && errors < 100 {
            match one() {
                Ok(true) => ok += 1,
                Ok(false) => {
                    errors += 1;
                    last_error = "bad reply".into();
                }
                Err(e) => {
                    errors += 1;
                    last_error = e.to_string();
                }
            }
        }
        (ok, started.elapsed().as_secs_f64())
    };
    phase(warmup);
    let (connections, elapsed) = phase(seconds);
    println!(
        "{}",
        json!({ "connections": connections, "errors": errors, "seconds": elapsed, "last_error": last_error })
    );
    if errors >= 100 {
        bail!("{errors} failed connections to {addr}: {last_error}");
    }
    Ok(())
}

/// The bench's cgroup subtree (`/<prefix>` in every hierarchy) and BPF pin directory; removed
/// on drop, after every process in them is killed.
struct Scratch {
    cgroup_root: String,
    bpf_root: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_cgroups(&self.cgroup_root) {
            eprintln!("bench proxy: {e:#}");
        }
        // Removing the pins detaches the links and frees the maps.
        if self.bpf_root.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.bpf_root)
        {
            eprintln!("bench proxy: remove {}: {e}", self.bpf_root.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Block 1: direct and iptables.

async fn block_iptables(
    topology: &Topology,
    clients: &Clients<'_>,
    sizes: &[usize],
    runs: usize,
    noflush_max: usize,
) -> Result<Value> {
    eprintln!("bench proxy: direct (no rules, no programs)");
    topology.clear_nat()?;
    let echo_direct = SocketAddrV4::new(SERVER_IP, ECHO_PORT);
    let mut direct_iperf = Vec::new();
    for _ in 0..runs {
        direct_iperf.push(clients.iperf(SERVER_IP)?);
    }
    let direct_rate = clients.rates(echo_direct, runs)?;
    eprintln!(
        "  iperf3 {:.2} Gbit/s, {} conn/s",
        median(&direct_iperf),
        direct_rate["median"]
    );

    let mut per_size = Vec::new();
    let mut iptables_iperf = Value::Null;
    for (k, &others) in sizes.iter().enumerate() {
        let services = ruleset_services(others);
        topology.clear_nat()?;
        let first = kube_proxy_ruleset(&services, true);
        let resync = kube_proxy_ruleset(&services, false);
        let rules = first.lines().filter(|l| l.starts_with("-A ")).count();
        let load = topology.restore(&first, false)?;
        // kube-proxy's own invocation is quadratic in iptables-nft 1.8.9 (about 90 s at 10,000
        // services on this machine kind), so by default it is timed at the smaller sizes only.
        let again = if others <= noflush_max {
            Some(topology.restore(&resync, true)?)
        } else {
            None
        };
        // The ruleset is in place once: check it (cheaply) before measuring through it.
        let (saved, _) = run_ok(
            &topology.node,
            Command::new("iptables-save").args(["-t", "nat"]),
            None,
        )?;
        let saved_rules = String::from_utf8_lossy(&saved.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count();
        if saved_rules != rules {
            bail!("iptables-save shows {saved_rules} rules in the node, expected {rules}");
        }
        let _ = topology
            .node
            .sysctl("net/netfilter/nf_conntrack_tcp_timeout_time_wait", "2");
        if k == 0 {
            let mut runs_gbit = Vec::new();
            for _ in 0..runs {
                runs_gbit.push(clients.iperf(IPERF_VIP)?);
            }
            eprintln!(
                "  iptables ({} services): iperf3 {:.2} Gbit/s",
                services.len(),
                median(&runs_gbit)
            );
            iptables_iperf = json!({ "runs": runs_gbit.iter().map(|g| round(*g, 2)).collect::<Vec<_>>(),
                                     "median": round(median(&runs_gbit), 2) });
        }
        let rate = clients.rates(SocketAddrV4::new(ECHO_VIP, ECHO_SERVICE_PORT), runs)?;
        let again_ms = again.map(|d| round(d.as_secs_f64() * 1000.0, 1));
        eprintln!(
            "  iptables, {others} other services ({rules} rules): restore {:.0} ms, --noflush resync {}, {} conn/s",
            load.as_secs_f64() * 1000.0,
            again_ms.map_or_else(|| "not timed".to_string(), |ms| format!("{ms:.0} ms")),
            rate["median"]
        );
        per_size.push(json!({
            "other_services": others,
            "services": services.len(),
            "rules": rules,
            "restore_ms": round(load.as_secs_f64() * 1000.0, 1),
            "noflush_resync_restore_ms": again_ms,
            "connections_per_second": rate,
        }));
    }
    topology.clear_nat()?;
    let left = topology.node_tables()?;
    if !left.is_empty() {
        bail!("the node namespace still has nft tables after block 1: {left}");
    }
    Ok(json!({
        "direct": {
            "iperf_gbit": { "runs": direct_iperf.iter().map(|g| round(*g, 2)).collect::<Vec<_>>(),
                            "median": round(median(&direct_iperf), 2) },
            "connections_per_second": direct_rate,
        },
        "iptables": { "iperf_gbit": iptables_iperf, "sizes": per_size },
    }))
}

// ---------------------------------------------------------------------------------------------
// Block 2: Windlass.

/// A `windlass agent` in the node namespace; killed on drop (its pins stay until [`Scratch`]
/// removes them).
struct Agent {
    child: Option<Child>,
    data: tempfile::TempDir,
    log_copy: PathBuf,
}

impl Agent {
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn check_running(&mut self) -> Result<u32> {
        let child = self.child.as_mut().context("agent not started")?;
        if let Some(status) = child.try_wait()? {
            bail!("windlass agent exited ({status}):\n{}", self.log_tail());
        }
        Ok(child.id())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::copy(self.data.path().join("agent.log"), &self.log_copy);
        // Mounts the agent may have made under its data dir, deepest first.
        let data = self.data.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&data))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// `apiserver::start`, retried: it can read the data dir before a slow (debug) server has
/// written its credentials, and then leaves that server running; such a child is killed here.
fn start_server(bin: &Path) -> Result<Server> {
    let mut last = None;
    for _ in 0..3 {
        match start(&bin.join("windlass"), "sqlite", &[]) {
            Ok(server) => return Ok(server),
            Err(e) => {
                let me = std::process::id().to_string();
                for pid in std::fs::read_dir("/proc")?
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let ppid = stat
                        .rsplit_once(") ")
                        .and_then(|(_, r)| r.split_whitespace().nth(1));
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if ppid == Some(me.as_str())
                        && String::from_utf8_lossy(&cmdline).contains("\0server\0")
                    {
                        let pid = nix::unistd::Pid::from_raw(pid);
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        let _ = nix::sys::wait::waitpid(pid, None);
                    }
                }
                last = Some(e);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("windlass server did not start")))
}

/// Why block 2 cannot run with this build, if it cannot.
fn windlass_unsupported(bin: &Path) -> Option<String> {
    let help = Command::new(bin.join("windlass"))
        .args(["agent", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for flag in ["--bpf-root", "--service-cidr", "--metrics-bind-address"] {
        if !help.contains(flag) {
            return Some(format!("`windlass agent {flag}` is not built yet"));
        }
    }
    let dump = Command::new(bin.join("windlass"))
        .args(["proxy", "dump", "--help"])
        .output();
    if !dump.is_ok_and(|o| o.status.success()) {
        return Some("`windlass proxy dump` is not built yet".into());
    }
    None
}

/// `utime + stime` of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("parse /proc/pid/stat")?;
    // After "pid (comm) ": utime and stime are the 12th and 13th fields.
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .sum();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64);
    Ok(ticks as f64 / per_second)
}

/// The connection rate through the VIP once the agent has settled (2 s after the datapath
/// matched), with the CPU the agent and the API server used meanwhile (% of a core): work
/// they do in the background competes with the client on this 2-core machine.
async fn windlass_rates(
    clients: &Clients<'_>,
    agent: &mut Agent,
    server: &Server,
    vip: SocketAddrV4,
    runs: usize,
) -> Result<(Value, (f64, f64))> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (agent_pid, server_pid) = (agent.check_running()?, server.child.id());
    let (a0, s0, started) = (
        cpu_seconds(agent_pid)?,
        cpu_seconds(server_pid)?,
        Instant::now(),
    );
    let rate = clients.rates(vip, runs)?;
    let wall = started.elapsed().as_secs_f64();
    let agent_cpu = (cpu_seconds(agent_pid)? - a0) / wall * 100.0;
    let server_cpu = (cpu_seconds(server_pid)? - s0) / wall * 100.0;
    agent.check_running()?;
    Ok((rate, (agent_cpu, server_cpu)))
}

async fn wait_node_ready(
    client: &HttpsClient,
    server: &Server,
    agent: &mut Agent,
    node: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let path = format!("/api/v1/nodes/{node}");
    loop {
        check_interrupted()?;
        agent.check_running()?;
        let (code, body) = request(client, server, "GET", &path, None).await?;
        if code == 200 {
            let node: Value = serde_json::from_slice(&body)?;
            if node
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("node {node} not Ready within 60 s:\n{}", agent.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (off the async threads) until `services` have the backend counts `want` gives.
async fn datapath(
    map: &Arc<PinnedMap>,
    services: Arc<Vec<ServicePort>>,
    want: fn(&ServicePort) -> Option<u16>,
) -> Result<Vec<Instant>> {
    let map = Arc::clone(map);
    tokio::task::spawn_blocking(move || {
        wait_datapath(&map, &services, want, PATIENCE, &AtomicBool::new(false))
    })
    .await?
}

fn endpoint_count(svc: &ServicePort) -> Option<u16> {
    Some(svc.endpoints.len() as u16)
}

fn absent(_: &ServicePort) -> Option<u16> {
    None
}

#[allow(clippy::too_many_arguments)]
async fn block_windlass(
    bin: &Path,
    topology: &Topology,
    clients: &Clients<'_>,
    scratch: &Scratch,
    prefix: &str,
    sizes: &[usize],
    runs: usize,
    bulk_count: usize,
    changes: usize,
) -> Result<Value> {
    let started = Instant::now();
    let node_name = format!("{prefix}-node");
    let server = Arc::new(start_server(bin)?);
    let port: u16 = server
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {}", server.url))?;
    let _forwarder = Forwarder::start(&topology.node, port)?;
    let data = tempfile::Builder::new()
        .prefix(&format!("{prefix}-agent"))
        .tempdir()
        .context("create the agent's data dir")?;
    let out = paths::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let agent_log = data.path().join("agent.log");
    let data_path = data.path().to_path_buf();
    // The agent's command line, for its first start and the cold restart below.
    let agent_command = || -> Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&agent_log)?;
        let data = &data_path;
        let mut command = Command::new(bin.join("windlass"));
        command
            .arg("agent")
            .arg("--kubeconfig")
            .arg(server.data.path().join("admin.kubeconfig"))
            .args(["--node-name", &node_name, "--node-ip", &NODE_IP.to_string()])
            .arg("--data-dir")
            .arg(data)
            .args(["--cgroup-root", &scratch.cgroup_root])
            .arg("--pod-log-dir")
            .arg(data.join("logs"))
            .arg("--shim")
            .arg(bin.join("windlass-shim"))
            .arg("--cni-plugin")
            .arg(bin.join("windlass-cni"))
            .arg("--bpf-root")
            .arg(&scratch.bpf_root)
            .args(["--service-cidr", SERVICE_CIDR])
            .args(["--metrics-bind-address", METRICS_ADDRESS])
            .env(
                "RUST_LOG",
                std::env::var("WINDLASS_BENCH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a Ctrl-C reaches the bench, which then tears down in order.
            command.process_group(0);
        }
        Ok(command)
    };
    let mut command = agent_command()?;
    let mut agent = Agent {
        child: None,
        data,
        log_copy: out.join("proxy-agent.log"),
    };
    agent.child = Some(
        topology
            .node
            .run(|| command.spawn())?
            .context("start windlass agent")?,
    );
    let api = client(&server.ca)?;
    wait_node_ready(&api, &server, &mut agent, &node_name).await?;
    create_namespace(&api, &server, NAMESPACE).await?;

    // The pinned frontend map, once the agent has made it.
    let map_path = scratch.bpf_root.join(&node_name).join("wl_lb_services");
    let deadline = Instant::now() + Duration::from_secs(60);
    let map = loop {
        check_interrupted()?;
        agent.check_running()?;
        match PinnedMap::open(&map_path) {
            Ok(map) => break Arc::new(map),
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!(e)).with_context(|| {
                    format!("open {} ({})", map_path.display(), agent.log_tail())
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if (map.key_size, map.value_size) != (12, 16) {
        bail!(
            "{} has {}-byte keys and {}-byte values; this bench reads struct wl_svc_key (12) \
             and struct wl_svc_value (16) of ebpf/proxy.h",
            map_path.display(),
            map.key_size,
            map.value_size
        );
    }
    eprintln!(
        "bench proxy: windlass agent up in {:.1} s, {} ({} entries max)",
        started.elapsed().as_secs_f64(),
        map_path.display(),
        map.max_entries
    );

    // The two measured services.
    let measured = Arc::new(vec![iperf_service(), echo_service()]);
    bulk_apply(&api, &server, Arc::clone(&measured), false).await?;
    datapath(&map, Arc::clone(&measured), endpoint_count).await?;

    eprintln!("bench proxy: windlass throughput");
    let (direct_iperf, vip_iperf) = iperf_pair(clients, SERVER_IP, IPERF_VIP, runs)?;
    eprintln!(
        "  iperf3 direct {} Gbit/s, ClusterIP {} Gbit/s",
        direct_iperf["median"], vip_iperf["median"]
    );
    let echo_vip = SocketAddrV4::new(ECHO_VIP, ECHO_SERVICE_PORT);
    let direct_rate = clients.rates(SocketAddrV4::new(SERVER_IP, ECHO_PORT), runs)?;
    agent.check_running()?;

    // Connection rate at the sizes below the bulk phase, with filler services.
    let mut per_size = Vec::new();
    let mut fillers: Arc<Vec<ServicePort>> = Arc::new(Vec::new());
    for &others in sizes.iter().filter(|&&s| s < bulk_count) {
        let wanted: Vec<ServicePort> = (0..others.saturating_sub(1)).map(filler).collect();
        let extra = Arc::new(wanted[fillers.len().min(wanted.len())..].to_vec());
        bulk_apply(&api, &server, Arc::clone(&extra), false).await?;
        datapath(&map, Arc::clone(&extra), endpoint_count).await?;
        fillers = Arc::new(wanted);
        let (rate, cpu) = windlass_rates(clients, &mut agent, &server, echo_vip, runs).await?;
        eprintln!(
            "  windlass, {others} other services: {} conn/s (agent {:.1}%, server {:.1}% of a core)",
            rate["median"], cpu.0, cpu.1
        );
        per_size.push(
            json!({ "size": others, "other_services": others, "services": others + 1,
                    "connections_per_second": rate, "agent_cpu_percent": round(cpu.0, 2),
                    "server_cpu_percent": round(cpu.1, 2) }),
        );
    }
    if !fillers.is_empty() {
        bulk_apply(&api, &server, Arc::clone(&fillers), true).await?;
        datapath(&map, Arc::clone(&fillers), absent).await?;
    }

    // 10,000 services x 10 endpoints at once.
    eprintln!("bench proxy: {bulk_count} services x {BULK_ENDPOINTS} endpoints");
    let services = Arc::new((0..bulk_count).map(bulk).collect::<Vec<_>>());
    let abandon = Arc::new(AtomicBool::new(false));
    let poller = {
        let (map, services, abandon) = (
            Arc::clone(&map),
            Arc::clone(&services),
            Arc::clone(&abandon),
        );
        std::thread::spawn(move || {
            wait_datapath(&map, &services, endpoint_count, 3 * PATIENCE, &abandon)
        })
    };
    let first_sent = Instant::now();
    let created = bulk_apply(&api, &server, Arc::clone(&services), false).await;
    if created.is_err() {
        abandon.store(true, Ordering::Relaxed);
    }
    let poller = tokio::task::spawn_blocking(move || poller.join());
    let programmed = poller
        .await?
        .map_err(|_| anyhow!("the datapath poller panicked"))?;
    let created = created?;
    let programmed = programmed.with_context(|| agent.log_tail())?;
    let last_created = created.iter().max().copied().unwrap_or(first_sent);
    let all_programmed = programmed.iter().max().copied().unwrap_or(first_sent);
    let create_s = last_created.duration_since(first_sent).as_secs_f64();
    let after_first_s = all_programmed.duration_since(first_sent).as_secs_f64();
    let after_last_s = all_programmed
        .saturating_duration_since(last_created)
        .as_secs_f64();
    let mut lag_ms: Vec<f64> = created
        .iter()
        .zip(&programmed)
        .map(|(c, p)| p.saturating_duration_since(*c).as_secs_f64() * 1000.0)
        .collect();
    lag_ms.sort_by(f64::total_cmp);
    eprintln!(
        "  created in {create_s:.2} s; all programmed {after_first_s:.2} s after the first create, \
         {after_last_s:.2} s after the last; per service p50 {:.1} ms, p99 {:.1} ms",
        percentile(&lag_ms, 50.0),
        percentile(&lag_ms, 99.0)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.check_running()?;
    let rss_mib = status_kib(pid, "VmRSS:")? / 1024.0;
    let hwm_mib = status_kib(pid, "VmHWM:")? / 1024.0;
    eprintln!("  agent RSS {rss_mib:.1} MiB (peak {hwm_mib:.1})");

    for &others in sizes.iter().filter(|&&s| s >= bulk_count) {
        let (rate, cpu) = windlass_rates(clients, &mut agent, &server, echo_vip, runs).await?;
        eprintln!(
            "  windlass, {} other services: {} conn/s (agent {:.1}%, server {:.1}% of a core)",
            bulk_count + 1,
            rate["median"],
            cpu.0,
            cpu.1
        );
        per_size.push(
            json!({ "other_services": bulk_count + 1, "services": bulk_count + 2,
                    "size": others, "connections_per_second": rate,
                    "agent_cpu_percent": round(cpu.0, 2), "server_cpu_percent": round(cpu.1, 2) }),
        );
    }

    // Endpoint changes: drop the last endpoint of a service, then put it back.
    eprintln!("bench proxy: {} endpoint changes", 2 * changes);
    let mut change_ms = Vec::new();
    let mut api_ms = Vec::new();
    let stride = (bulk_count / changes.max(1)).max(1);
    for k in 0..changes.min(bulk_count) {
        let svc = &services[k * stride];
        for shrink in [true, false] {
            check_interrupted()?;
            let mut target = svc.clone();
            if shrink {
                target.endpoints.pop();
            }
            let sent = Instant::now();
            let patch = {
                let (api, server, svc, target) = (
                    api.clone(),
                    Arc::clone(&server),
                    svc.clone(),
                    target.clone(),
                );
                tokio::spawn(async move {
                    patch_endpoints(&api, &server, &svc, &target.endpoints).await?;
                    Ok::<Instant, anyhow::Error>(Instant::now())
                })
            };
            let seen = datapath(&map, Arc::new(vec![target]), endpoint_count).await?;
            let answered = patch.await??;
            change_ms.push(seen[0].duration_since(sent).as_secs_f64() * 1000.0);
            api_ms.push(answered.duration_since(sent).as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    change_ms.sort_by(f64::total_cmp);
    api_ms.sort_by(f64::total_cmp);
    eprintln!(
        "  endpoint change to datapath p50 {:.1} ms, p99 {:.1} ms (API answered p50 {:.1} ms)",
        percentile(&change_ms, 50.0),
        percentile(&change_ms, 99.0),
        percentile(&api_ms, 50.0)
    );
    let pid = agent.check_running()?;
    let rss_after_mib = status_kib(pid, "VmRSS:")? / 1024.0;

    // Cold start: a new agent with empty maps (its pins removed) and every service already in
    // the API, timed from its start to the last service in the datapath. This is the time to
    // program them all, apart from the API's creation rate.
    eprintln!("bench proxy: cold start with {bulk_count} services in the API");
    if let Some(mut child) = agent.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let pin_dir = scratch.bpf_root.join(&node_name);
    std::fs::remove_dir_all(&pin_dir).with_context(|| format!("remove {}", pin_dir.display()))?;
    let mut command = agent_command()?;
    let cold_started = Instant::now();
    agent.child = Some(
        topology
            .node
            .run(|| command.spawn())?
            .context("restart windlass agent")?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let cold_map = loop {
        check_interrupted()?;
        agent.check_running()?;
        match PinnedMap::open(&map_path) {
            Ok(map) => break Arc::new(map),
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!(e)).with_context(|| agent.log_tail());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let cold = datapath(&cold_map, Arc::clone(&services), endpoint_count)
        .await
        .with_context(|| agent.log_tail())?;
    let cold_s = cold
        .iter()
        .max()
        .map(|t| t.duration_since(cold_started).as_secs_f64())
        .unwrap_or(f64::NAN);
    let pid = agent.check_running()?;
    let rss_cold_mib = status_kib(pid, "VmRSS:")? / 1024.0;
    eprintln!(
        "  all {bulk_count} services in the datapath {cold_s:.2} s after the agent started; RSS {rss_cold_mib:.1} MiB"
    );
    Ok(json!({
        "iperf_gbit": vip_iperf,
        "direct_iperf_gbit": direct_iperf,
        "direct_connections_per_second": direct_rate,
        "sizes": per_size,
        "bulk": {
            "services": bulk_count,
            "endpoints_per_service": BULK_ENDPOINTS,
            "in_flight": IN_FLIGHT,
            "create_seconds": round(create_s, 3),
            "all_programmed_after_first_create_seconds": round(after_first_s, 3),
            "all_programmed_after_last_create_seconds": round(after_last_s, 3),
            "cold_start_all_programmed_seconds": round(cold_s, 3),
            "agent_rss_after_cold_start_mib": round(rss_cold_mib, 1),
            "per_service_programmed_ms": { "p50": round(percentile(&lag_ms, 50.0), 1),
                                           "p99": round(percentile(&lag_ms, 99.0), 1),
                                           "max": round(lag_ms.last().copied().unwrap_or(f64::NAN), 1) },
        },
        "endpoint_changes": {
            "count": change_ms.len(),
            "p50_ms": round(percentile(&change_ms, 50.0), 2),
            "p99_ms": round(percentile(&change_ms, 99.0), 2),
            "max_ms": round(change_ms.last().copied().unwrap_or(f64::NAN), 2),
            "api_answered_p50_ms": round(percentile(&api_ms, 50.0), 2),
        },
        "agent_rss_mib": round(rss_mib, 1),
        "agent_peak_rss_mib": round(hwm_mib, 1),
        "agent_rss_after_changes_mib": round(rss_after_mib, 1),
        "seconds": round(started.elapsed().as_secs_f64(), 1),
    }))
}

// ---------------------------------------------------------------------------------------------
// Report.

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// (target, met: `None` when not measured).
fn targets(result: &Value) -> Vec<(String, Option<bool>)> {
    let w = &result["windlass"];
    let measured = w["skipped"].is_null() && !w.is_null();
    // Against the direct runs interleaved with the ClusterIP runs (same conditions, so the
    // ratio is not the machine's drift between blocks).
    let direct = f(&w["direct_iperf_gbit"]["median"]);
    let ratio = f(&w["iperf_gbit"]["median"]) / direct;
    let rate_at = |sizes: &Value, size: usize| -> f64 {
        sizes
            .as_array()
            .and_then(|a| {
                a.iter().find(|s| {
                    s["size"].as_u64().or(s["other_services"].as_u64()) == Some(size as u64)
                })
            })
            .map(|s| f(&s["connections_per_second"]["median"]))
            .unwrap_or(f64::NAN)
    };
    let sizes: Vec<usize> = result["sizes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as usize)
                .collect()
        })
        .unwrap_or_default();
    let (smallest, largest) = (
        sizes.first().copied().unwrap_or(1),
        sizes.last().copied().unwrap_or(1),
    );
    let w_small = rate_at(&w["sizes"], smallest);
    let w_large = rate_at(&w["sizes"], largest);
    let ahead = sizes
        .iter()
        .all(|&s| rate_at(&w["sizes"], s) > rate_at(&result["iptables"]["sizes"], s));
    let m = |met: bool| measured.then_some(met);
    let bulk = w["bulk"]["services"]
        .as_u64()
        .map_or_else(|| "10000".to_string(), |n| n.to_string());
    vec![
        (
            format!(
                "ClusterIP throughput >= 98% of direct ({:.1}%)",
                ratio * 100.0
            ),
            m(ratio >= TARGET_THROUGHPUT_RATIO),
        ),
        (
            format!(
                "connection rate at {largest} services within 5% of {smallest} ({:+.1}%)",
                (w_large / w_small - 1.0) * 100.0
            ),
            m(w_large >= w_small * (1.0 - TARGET_RATE_DROP)),
        ),
        (
            "connection rate ahead of iptables at every size".into(),
            m(ahead),
        ),
        (
            format!(
                "{bulk} services programmed < 2 s after created ({:.2} s after the last create)",
                f(&w["bulk"]["all_programmed_after_last_create_seconds"])
            ),
            m(f(&w["bulk"]["all_programmed_after_last_create_seconds"]) < TARGET_PROGRAMMED_S),
        ),
        (
            format!(
                "{bulk} services programmed < 2 s by a starting agent ({:.2} s)",
                f(&w["bulk"]["cold_start_all_programmed_seconds"])
            ),
            m(f(&w["bulk"]["cold_start_all_programmed_seconds"]) < TARGET_PROGRAMMED_S),
        ),
        (
            format!(
                "endpoint change p99 < 50 ms ({:.1} ms)",
                f(&w["endpoint_changes"]["p99_ms"])
            ),
            m(f(&w["endpoint_changes"]["p99_ms"]) < TARGET_CHANGE_P99_MS),
        ),
        (
            format!(
                "agent RSS with {bulk} services < 80 MiB ({:.1} MiB)",
                f(&w["agent_rss_mib"])
            ),
            m(f(&w["agent_rss_mib"]) < TARGET_RSS_MIB),
        ),
    ]
}

fn markdown(result: &Value) -> String {
    let w = &result["windlass"];
    let skipped = w["skipped"].as_str();
    let direct = &result["direct"]["iperf_gbit"];
    let mut md = String::from(
        "| path | iperf3 TCP (Gbit/s, median) | of direct | direct measured |\n|---|---|---|---|\n",
    );
    let mut row = |name: &str, v: &Value, base: &Value, base_name: &str| {
        let g = f(&v["median"]);
        let _ = writeln!(
            md,
            "| {name} | {g:.2} | {:.1}% | {base_name} |",
            g / f(&base["median"]) * 100.0
        );
    };
    row(
        "direct to the server",
        direct,
        direct,
        "no rules, no programs",
    );
    row(
        "ClusterIP, kube-proxy iptables ruleset",
        &result["iptables"]["iperf_gbit"],
        direct,
        "no rules, no programs (before)",
    );
    match skipped {
        Some(reason) => {
            let _ = writeln!(md, "| ClusterIP, Windlass eBPF | {reason} | | |");
        }
        None => {
            row(
                "direct, Windlass programs attached",
                &w["direct_iperf_gbit"],
                direct,
                "no rules, no programs",
            );
            row(
                "ClusterIP, Windlass eBPF",
                &w["iperf_gbit"],
                &w["direct_iperf_gbit"],
                "programs attached, runs interleaved",
            );
        }
    }
    // Each rate also as a share of the direct rate measured in the same block, which takes out
    // the machine's drift between the blocks.
    let direct_rate = f(&result["direct"]["connections_per_second"]["median"]);
    let windlass_direct = f(&w["direct_connections_per_second"]["median"]);
    let _ = writeln!(
        md,
        "\n| other services | iptables rules | iptables-restore (ms) | --noflush resync (ms) | iptables conn/s (of direct) | Windlass conn/s (of direct) | Windlass / iptables |\n|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| direct to the server | | | | {direct_rate} (no rules) | {} | |",
        if windlass_direct.is_nan() {
            String::new()
        } else {
            format!("{windlass_direct} (programs attached)")
        }
    );
    let windlass_sizes = w["sizes"].as_array().cloned().unwrap_or_default();
    for s in result["iptables"]["sizes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
    {
        let ours = windlass_sizes
            .iter()
            .find(|o| o["size"] == s["other_services"]);
        let ours_rate = ours.map(|o| f(&o["connections_per_second"]["median"]));
        let theirs = f(&s["connections_per_second"]["median"]);
        let _ = writeln!(
            md,
            "| {}{} | {} | {} | {} | {theirs} ({:.0}%) | {} | {} |",
            s["other_services"],
            ours.filter(|o| o["other_services"] != s["other_services"])
                .map(|o| format!(" (Windlass: {})", o["other_services"]))
                .unwrap_or_default(),
            s["rules"],
            s["restore_ms"],
            s["noflush_resync_restore_ms"]
                .as_f64()
                .map_or_else(|| "not timed".to_string(), |v| v.to_string()),
            theirs / direct_rate * 100.0,
            ours_rate
                .map(|r| format!("{r} ({:.0}%)", r / windlass_direct * 100.0))
                .unwrap_or_else(|| "-".into()),
            ours_rate
                .map(|r| format!("{:.2}", r / theirs))
                .unwrap_or_default(),
        );
    }
    if skipped.is_none() {
        let b = &w["bulk"];
        let c = &w["endpoint_changes"];
        let _ = writeln!(
            md,
            "\n| Windlass control path | value |\n|---|---|\n\
             | {} services × {} endpoints created ({} in flight) | {} s |\n\
             | all in the datapath, after the last create | {} s |\n\
             | all in the datapath, after the first create | {} s |\n\
             | all in the datapath, a starting agent with empty maps | {} s |\n\
             | per service, create → datapath p50 / p99 | {} / {} ms |\n\
             | endpoint change → datapath p50 / p99 ({} changes) | {} / {} ms |\n\
             | agent RSS with {} services (peak) | {} MiB ({} MiB) |",
            b["services"],
            b["endpoints_per_service"],
            b["in_flight"],
            b["create_seconds"],
            b["all_programmed_after_last_create_seconds"],
            b["all_programmed_after_first_create_seconds"],
            b["cold_start_all_programmed_seconds"],
            b["per_service_programmed_ms"]["p50"],
            b["per_service_programmed_ms"]["p99"],
            c["count"],
            c["p50_ms"],
            c["p99_ms"],
            b["services"],
            w["agent_rss_mib"],
            w["agent_peak_rss_mib"],
        );
    }
    md
}

/// Blocks SIGINT and SIGTERM in this process; a thread sets [`INTERRUPTED`] and fires the
/// returned receiver when one comes.
fn interrupts() -> Result<tokio::sync::oneshot::Receiver<()>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("block SIGINT and SIGTERM")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            eprintln!("bench proxy: {signal}; cleaning up");
            INTERRUPTED.store(true, Ordering::Relaxed);
            let _ = tx.send(());
        }
    });
    Ok(rx)
}

async fn bench(bin: &Path, prefix: &str, sizes: &[usize]) -> Result<Value> {
    let runs: usize = env_or("WINDLASS_BENCH_PROXY_RUNS", 5)?;
    let conn_seconds: f64 = env_or("WINDLASS_BENCH_PROXY_SECONDS", 3.0)?;
    let iperf_seconds: u64 = env_or("WINDLASS_BENCH_PROXY_IPERF_SECONDS", 5)?;
    let bulk_count: usize = env_or("WINDLASS_BENCH_PROXY_SERVICES", 10_000)?;
    let changes: usize = env_or("WINDLASS_BENCH_PROXY_CHANGES", 100)?;
    let noflush_max: usize = env_or("WINDLASS_BENCH_PROXY_NOFLUSH_MAX", 1000)?;
    let with_windlass = std::env::var("WINDLASS_BENCH_PROXY_WINDLASS").map_or(true, |v| v != "0");

    // Drop order (reverse of declaration): servers, then namespaces, then cgroups and pins.
    let scratch = Scratch {
        cgroup_root: format!("/{prefix}"),
        bpf_root: Path::new("/sys/fs/bpf").join(prefix),
    };
    let client_cgroup = Path::new("/sys/fs/cgroup/unified")
        .join(prefix)
        .join("bench-client");
    std::fs::create_dir_all(&client_cgroup)
        .with_context(|| format!("create {}", client_cgroup.display()))?;
    std::fs::create_dir(&scratch.bpf_root)
        .with_context(|| format!("create {}", scratch.bpf_root.display()))?;
    let topology = Topology::create(prefix)?;
    eprintln!(
        "bench proxy: namespaces {prefix}-{{node,client,server}}, client cgroup {}",
        client_cgroup.display()
    );
    let _echo = EchoServer::start(&topology.server)?;
    let iperf_server = Killed(Some(
        topology
            .server
            .run(|| {
                use std::os::unix::process::CommandExt;
                Command::new("iperf3")
                    .args(["-s", "-p", &IPERF_PORT.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
            })?
            .context("start iperf3 -s")?,
    ));
    // Wait for iperf3 to listen (its port in the server namespace's /proc/net/tcp6, or tcp).
    let port = format!(":{IPERF_PORT:04X}");
    let listening = |table: &str| {
        table.lines().any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&port) && fields[3] == "0A"
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topology.server.run(|| {
        ["tcp", "tcp6"].iter().any(|t| {
            listening(
                &std::fs::read_to_string(format!("/proc/thread-self/net/{t}")).unwrap_or_default(),
            )
        })
    })? {
        if Instant::now() > deadline {
            bail!("iperf3 -s did not listen");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let clients = Clients {
        topology: &topology,
        procs: client_cgroup.join("cgroup.procs"),
        exe: std::env::current_exe().context("find the xtask binary")?,
        conn_seconds,
        iperf_seconds,
    };

    let block1 = block_iptables(&topology, &clients, sizes, runs, noflush_max).await?;
    let windlass = if !with_windlass {
        json!({ "skipped": "WINDLASS_BENCH_PROXY_WINDLASS=0" })
    } else if let Some(reason) = windlass_unsupported(bin) {
        eprintln!("bench proxy: windlass skipped: {reason}");
        json!({ "skipped": reason })
    } else {
        block_windlass(
            bin, &topology, &clients, &scratch, prefix, sizes, runs, bulk_count, changes,
        )
        .await?
    };
    drop(iperf_server);
    Ok(json!({
        "runs": runs,
        "connection_seconds": conn_seconds,
        "iperf_seconds": iperf_seconds,
        "sizes": sizes,
        "direct": block1["direct"],
        "iptables": block1["iptables"],
        "windlass": windlass,
    }))
}

/// Builds the release binaries, runs the benchmark, writes the results.
pub fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the proxy benchmark creates network namespaces, iptables rules, cgroups and BPF \
             pins: run `cargo xtask bench proxy` as root"
        );
    }
    crate::deps::ensure()?;
    let sizes: Vec<usize> = std::env::var("WINDLASS_BENCH_PROXY_SIZES")
        .unwrap_or_else(|_| "1,1000,10000".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("WINDLASS_BENCH_PROXY_SIZES: comma-separated service counts")?;
    if sizes.is_empty() || sizes.contains(&0) {
        bail!("WINDLASS_BENCH_PROXY_SIZES: at least one size, each at least 1");
    }
    for tool in ["iperf3", "iptables-restore", "iptables-save", "nft", "ip"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            bail!("{tool} is not installed (`cargo xtask deps`)");
        }
    }
    // WINDLASS_BENCH_PROXY_SKIP_BUILD=1 reuses the binaries already built;
    // WINDLASS_BENCH_PROXY_PROFILE=debug runs the debug ones (a functional check, not figures).
    let profile =
        std::env::var("WINDLASS_BENCH_PROXY_PROFILE").unwrap_or_else(|_| "release".into());
    if !matches!(profile.as_str(), "release" | "debug") {
        bail!("WINDLASS_BENCH_PROXY_PROFILE={profile:?}: release or debug");
    }
    if std::env::var_os("WINDLASS_BENCH_PROXY_SKIP_BUILD").is_none() {
        if profile == "release" {
            paths::cargo(&["build", "--release", "--bins"])?;
        } else {
            paths::cargo(&["build", "--bins"])?;
        }
    }
    let bin = paths::target_dir().join(&profile);
    let prefix = format!("wlb{}", random_hex(3)?);
    let interrupted = interrupts()?;
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        tokio::select! {
            result = bench(&bin, &prefix, &sizes) => result,
            _ = interrupted => Err(anyhow!("interrupted")),
        }
    })?;
    drop(runtime);
    let seconds = started.elapsed().as_secs_f64();
    let targets = targets(&result);
    let out = paths::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let report = json!({
        "benchmark": "proxy",
        "command": "cargo xtask bench proxy",
        "machine": format!("{} cores, kernel {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                           std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()),
        "iptables": String::from_utf8_lossy(&Command::new("iptables").arg("--version").output().map(|o| o.stdout).unwrap_or_default()).trim(),
        "profile": profile,
        "seconds": round(seconds, 1),
        "result": result,
        "targets": targets.iter().map(|(t, met)| json!({ "target": t, "met": met })).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("proxy.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&result);
    std::fs::write(out.join("proxy.md"), &md)?;
    println!("{md}");
    for (target, met) in &targets {
        let verdict = match met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "NOT MEASURED",
        };
        println!("{target}: {verdict}");
    }
    eprintln!("bench proxy: {seconds:.0} s after the build");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_hash_is_kube_proxys() {
        // kube-proxy's own test vector (pkg/proxy/iptables): the default/kubernetes:https
        // service's chain is KUBE-SVC-NPX46M4PTMTKRN6Y.
        assert_eq!(
            chain_hash("default/kubernetes:httpstcp"),
            "NPX46M4PTMTKRN6Y"
        );
    }
    /// The whole input for two services (`iperf`, one endpoint; `echo`, two), as kube-proxy's
    /// iptables mode writes it; chain names are kube-proxy's hashes of `ns/name:port` + `tcp`
    /// (+ the endpoint).
    #[test]
    fn ruleset_for_two_services() {
        let expected = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-WGXVGVBVSGVAU34D - [0:0]
:KUBE-SEP-3CWIP54AI5RGL22N - [0:0]
:KUBE-SVC-ZQKD7XGVILNJZT2M - [0:0]
:KUBE-SEP-TZCYE2FWOZHCRXUN - [0:0]
:KUBE-SEP-UQNLYWN4ZRBTI572 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment "bench/iperf:iperf cluster IP" -m tcp -p tcp -d 10.96.0.10/32 --dport 5201 -j KUBE-SVC-WGXVGVBVSGVAU34D
-A KUBE-SVC-WGXVGVBVSGVAU34D -m comment --comment "bench/iperf:iperf -> 10.250.2.2:5201" -j KUBE-SEP-3CWIP54AI5RGL22N
-A KUBE-SERVICES -m comment --comment "bench/echo:http cluster IP" -m tcp -p tcp -d 10.96.0.20/32 --dport 80 -j KUBE-SVC-ZQKD7XGVILNJZT2M
-A KUBE-SVC-ZQKD7XGVILNJZT2M -m comment --comment "bench/echo:http -> 10.250.2.2:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-TZCYE2FWOZHCRXUN
-A KUBE-SVC-ZQKD7XGVILNJZT2M -m comment --comment "bench/echo:http -> 10.250.2.3:8080" -j KUBE-SEP-UQNLYWN4ZRBTI572
-A KUBE-SEP-3CWIP54AI5RGL22N -m comment --comment bench/iperf:iperf -s 10.250.2.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-3CWIP54AI5RGL22N -m comment --comment bench/iperf:iperf -m tcp -p tcp -j DNAT --to-destination 10.250.2.2:5201
-A KUBE-SEP-TZCYE2FWOZHCRXUN -m comment --comment bench/echo:http -s 10.250.2.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-TZCYE2FWOZHCRXUN -m comment --comment bench/echo:http -m tcp -p tcp -j DNAT --to-destination 10.250.2.2:8080
-A KUBE-SEP-UQNLYWN4ZRBTI572 -m comment --comment bench/echo:http -s 10.250.2.3/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-UQNLYWN4ZRBTI572 -m comment --comment bench/echo:http -m tcp -p tcp -j DNAT --to-destination 10.250.2.3:8080
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"#;
        assert_eq!(kube_proxy_ruleset(&ruleset_services(1), true), expected);
        // A resync leaves the jumps out and keeps everything else.
        let resync = kube_proxy_ruleset(&ruleset_services(1), false);
        let without_jumps: String = expected
            .lines()
            .filter(|l| {
                !l.starts_with("-A PREROUTING")
                    && !l.starts_with("-A OUTPUT")
                    && !l.starts_with("-A POSTROUTING")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(resync, without_jumps);
    }

    #[test]
    fn probabilities_are_one_over_the_endpoints_left() {
        let mut svc = bulk(7);
        svc.endpoints.truncate(4);
        let rules = kube_proxy_ruleset(&[svc], false);
        let probabilities: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SVC-"))
            .map(|l| l.split("--probability ").nth(1).map_or("-", |p| &p[..12]))
            .collect();
        assert_eq!(
            probabilities,
            ["0.2500000000", "0.3333333333", "0.5000000000", "-"]
        );
    }

    #[test]
    fn frontend_key_is_wl_svc_key() {
        assert_eq!(
            frontend_key(ECHO_VIP, ECHO_SERVICE_PORT),
            [10, 96, 0, 20, 0, 80, 0, 0, 6, 1, 0, 0]
        );
    }
}
