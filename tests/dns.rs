//! Cluster DNS served by the agent (issue 8): `windlass server` plus a `windlass agent` in a node
//! namespace, real pods asking real questions through the pods' resolv.conf, the
//! `kube-system/kube-dns` Service (10.96.0.10) and the eBPF proxy to the agent's DNS server on
//! the node IP.
//!
//! The node's resolver (`--resolv-conf`) points at a stand-in upstream, `wl-probe dns-serve`,
//! on an address of the node namespace's loopback (TEST-NET-2), so forwarded names never leave
//! the test's namespaces. A busybox client pod prints its resolv.conf and the answers of
//! `nslookup` (and a connection to what the short name resolved to) into its log, which the test reads.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use windlass_tests::agent::{AgentOptions, TestAgent};
use windlass_tests::apiserver::{Backend, TestServer};
use windlass_tests::proxy;
use windlass_tests::topology::Topology;
use windlass_tests::wait::eventually;
use windlass_tests::{prefix, prereq};

const PATIENCE: Duration = Duration::from_secs(90);
/// The stand-in upstream resolver's address, on the node namespace's loopback.
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// What the upstream answers every A question with.
const UPSTREAM_ANSWER: &str = "203.0.113.7";
const NAMESPACE: &str = "team-a";

/// A child process killed (and reaped) on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Cluster {
    // Drop order: the upstream, the agent (its pods), the topology, the server.
    _upstream: KillOnDrop,
    agent: TestAgent,
    topology: Topology,
    server: TestServer,
    kubectl: PathBuf,
    files: tempfile::TempDir,
}

impl Cluster {
    /// A one-node cluster whose node resolver is the stand-in upstream (or none, when
    /// `with_upstream` is false).
    fn start(with_upstream: bool) -> Cluster {
        prereq::require_root();
        let ip = prereq::require_tool("ip");
        proxy::wl_probe_bin();
        let busybox = proxy::test_image("busybox");
        let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
        let topology = Topology::builder().nodes(1).build().expect("topology");
        let node = topology.node(0);
        let files = tempfile::Builder::new()
            .prefix(&format!("{}-dns", prefix::unique()))
            .tempdir()
            .expect("tempdir");
        // The node's resolver: the stand-in upstream, with a search domain pods inherit.
        let status = Command::new(&ip)
            .args([
                "-n",
                node.ns.name(),
                "addr",
                "add",
                &format!("{UPSTREAM}/32"),
                "dev",
                "lo",
            ])
            .status()
            .expect("run ip");
        assert!(
            status.success(),
            "cannot add {UPSTREAM} to the node's loopback"
        );
        let resolv_conf = files.path().join("resolv.conf");
        let nameserver = if with_upstream {
            format!("nameserver {UPSTREAM}\n")
        } else {
            String::new()
        };
        std::fs::write(
            &resolv_conf,
            format!("search upstream.test\n{nameserver}options timeout:2\n"),
        )
        .expect("write resolv.conf");
        let agent = TestAgent::start_with(
            &server,
            node,
            AgentOptions {
                backoff_base_seconds: 1.0,
                extra_args: vec!["--resolv-conf".into(), resolv_conf.display().to_string()],
                ..Default::default()
            },
        )
        .expect("start agent");
        let upstream = agent
            .spawn_node_client(
                &proxy::wl_probe_bin(),
                &["dns-serve", &format!("{UPSTREAM}:53"), UPSTREAM_ANSWER],
            )
            .expect("start the upstream DNS server");
        agent.import_image(&busybox).expect("import busybox");
        let cluster = Cluster {
            _upstream: KillOnDrop(upstream),
            agent,
            topology,
            server,
            kubectl: prereq::kubectls().remove(0),
            files,
        };
        let node = cluster.agent.node_name().to_string();
        eventually("the node to be Ready", PATIENCE, || {
            let node = cluster.get(&["node", &node])?;
            node["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        });
        cluster
    }

    fn get(&self, what: &[&str]) -> Option<Value> {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json"]);
        let out = self.server.kubectl(&self.kubectl, &args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn apply(&self, manifest: &str) {
        let file = self.files.path().join(format!("{}.yaml", prefix::unique()));
        std::fs::write(&file, manifest).expect("write manifest");
        self.server
            .kubectl_ok(&self.kubectl, &["apply", "-f", &file.display().to_string()]);
    }

    fn pod_ip(&self, name: &str) -> String {
        eventually(&format!("pod {name} to run"), PATIENCE, || {
            let pod = self.get(&["pod", "-n", NAMESPACE, name])?;
            (pod["status"]["phase"] == "Running").then_some(())?;
            pod["status"]["podIP"].as_str().map(str::to_string)
        })
    }

    /// The kube-dns Service, from the API server's bootstrap or made here when that has not
    /// landed.
    fn ensure_kube_dns(&self) {
        if self
            .get(&["service", "-n", "kube-system", "kube-dns"])
            .is_some()
        {
            return;
        }
        if self.get(&["namespace", "kube-system"]).is_none() {
            self.apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-system\n");
        }
        self.apply(
            "apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
spec:
  clusterIP: 10.96.0.10
  internalTrafficPolicy: Local
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
",
        );
    }
}

/// One section of the client's log: the lines after `== <name>` up to the next section.
fn section<'a>(log: &'a str, name: &str) -> &'a str {
    let marker = format!("== {name}\n");
    let Some(start) = log.find(&marker) else {
        panic!("no section {name} in the client's log:\n{log}");
    };
    let rest = &log[start + marker.len()..];
    &rest[..rest.find("== ").unwrap_or(rest.len())]
}

/// A DNS question for `name` type A, with id 0x1234 and recursion desired.
fn question(name: &str) -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        query.push(u8::try_from(label.len()).expect("short label"));
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// The response code and the A records' addresses of an answer to [`question`].
fn parse_answer(answer: &[u8]) -> (u8, Vec<Ipv4Addr>) {
    assert_eq!(&answer[..2], &[0x12, 0x34], "answer id");
    let rcode = answer[3] & 0x0f;
    // The A records' data: a 4-byte RDATA after type 1, class 1, a TTL and length 4.
    let addresses = answer
        .windows(14)
        .filter(|w| w[..4] == [0, 1, 0, 1] && w[8..10] == [0, 4])
        .map(|w| Ipv4Addr::new(w[10], w[11], w[12], w[13]))
        .collect();
    (rcode, addresses)
}

/// [`question`] over UDP to `server`.
fn udp_query(server: SocketAddr, name: &str) -> (u8, Vec<Ipv4Addr>) {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    socket.send_to(&question(name), server).expect("send");
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no answer from the DNS server {server} over UDP: {e}"));
    parse_answer(&buf[..n])
}

/// [`question`] over TCP (RFC 1035 framing) to `server`.
fn tcp_query(server: SocketAddr, name: &str) -> (u8, Vec<Ipv4Addr>) {
    let query = question(name);
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the DNS server {server} over TCP: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let len = u16::try_from(query.len()).expect("short query");
    stream.write_all(&len.to_be_bytes()).expect("send");
    stream.write_all(&query).expect("send");
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .expect("read the answer's length");
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).expect("read the answer");
    parse_answer(&answer)
}

#[test]
fn pods_resolve_cluster_names_through_the_agent() {
    let cluster = Cluster::start(true);
    let node = cluster.topology.node(0);
    cluster.ensure_kube_dns();

    // The control plane publishes the node's agent as the kube-dns endpoint.
    let node_ip = node.underlay_ip.to_string();
    eventually(
        "the kube-dns EndpointSlice to list the node",
        PATIENCE,
        || {
            let slice =
                cluster.get(&["endpointslice", "-n", "kube-system", "kube-dns-windlass"])?;
            let endpoints = slice["endpoints"].as_array()?;
            endpoints
                .iter()
                .any(|e| e["addresses"][0] == node_ip.as_str() && e["conditions"]["ready"] == true)
                .then_some(())
        },
    );

    cluster.apply(&format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {NAMESPACE}
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: {NAMESPACE}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports:
  - {{name: http, port: 8080, protocol: TCP}}
---
apiVersion: v1
kind: Service
metadata:
  name: ext
  namespace: {NAMESPACE}
spec:
  type: ExternalName
  externalName: www.upstream.test
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: {NAMESPACE}
  labels: {{app: web}}
spec:
  containers:
  - name: web
    image: windlass.local/busybox:latest
    command: [sh, -c, 'exec nc -ll -p 8080 -e echo hello-from-web']
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: {NAMESPACE}
  labels: {{app: db}}
spec:
  containers:
  - name: db
    image: windlass.local/busybox:latest
    command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: db-1
  namespace: {NAMESPACE}
  labels: {{app: db}}
spec:
  containers:
  - name: db
    image: windlass.local/busybox:latest
    command: [sleep, '3600']
"
    ));
    let web_ip: String = eventually("service web to get a ClusterIP", PATIENCE, || {
        cluster.get(&["service", "-n", NAMESPACE, "web"])?["spec"]["clusterIP"]
            .as_str()
            .map(str::to_string)
    });
    let db_ips = [cluster.pod_ip("db-0"), cluster.pod_ip("db-1")];
    cluster.pod_ip("web-0");

    // The agent answers over TCP too, on the node IP.
    let dns = SocketAddr::new(node.underlay_ip.into(), 53);
    let fqdn = format!("web.{NAMESPACE}.svc.cluster.local");
    let (rcode, addresses) = eventually("the agent's DNS to know service web", PATIENCE, || {
        let answer = node
            .ns
            .run(|| tcp_query(dns, &fqdn))
            .expect("enter the node namespace");
        (answer.0 == 0 && !answer.1.is_empty()).then_some(answer)
    });
    assert_eq!(
        (rcode, addresses),
        (0, vec![web_ip.parse::<Ipv4Addr>().expect("ip")])
    );

    let script = format!(
        r#"i=0
until nslookup {fqdn} >/dev/null 2>&1 || [ $i -ge 60 ]; do i=$((i+1)); sleep 1; done
echo "== resolv"; cat /etc/resolv.conf
echo "== fqdn"; nslookup {fqdn}
echo "== short"; nslookup web
echo "== wget"; addr=$(nslookup web | awk '/^Address: /{{print $2; exit}}'); echo | nc -w 5 $addr 80
echo "== headless"; nslookup db.{NAMESPACE}.svc.cluster.local
echo "== srv"; nslookup -type=srv _http._tcp.db.{NAMESPACE}.svc.cluster.local
echo "== pod"; ip=$(hostname -i); echo "ip $ip"; nslookup $(echo $ip | tr . -).{NAMESPACE}.pod.cluster.local
echo "== upstream"; nslookup www.upstream.test
echo "== upstream-nx"; nslookup nxname.upstream.test
echo "== external"; nslookup ext.{NAMESPACE}.svc.cluster.local
echo "== missing"; nslookup missing.{NAMESPACE}.svc.cluster.local
echo "== kubernetes"; nslookup kubernetes.default.svc.cluster.local
echo "== end"
exec sleep 3600
"#
    );
    cluster.apply(&format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: {NAMESPACE}
spec:
  containers:
  - name: client
    image: windlass.local/busybox:latest
    command: [sh, -c, {script:?}]
"
    ));
    let log_dir = cluster.agent.pod_log_dir();
    let log = eventually(
        "the client pod to finish its questions",
        PATIENCE * 2,
        || {
            let log = proxy::pod_log(&log_dir, NAMESPACE, "client", "client");
            log.contains("== end").then_some(log)
        },
    );
    eprintln!("client log:\n{log}");

    assert_eq!(
        section(&log, "resolv"),
        format!(
            "search {NAMESPACE}.svc.cluster.local svc.cluster.local cluster.local upstream.test\nnameserver 10.96.0.10\noptions ndots:5\n"
        ),
        "the pod's resolv.conf"
    );
    assert!(
        section(&log, "fqdn").contains(&format!("Address: {web_ip}")),
        "the FQDN of a ClusterIP service: {log}"
    );
    assert!(
        section(&log, "short").contains(&format!("Address: {web_ip}")),
        "a short name through the search path: {log}"
    );
    assert_eq!(
        section(&log, "wget").trim(),
        "hello-from-web",
        // busybox's static wget and nc crash resolving names or service ports (static glibc
        // NSS), so nc goes to the address `nslookup web` found through the search path.
        "a connection to the address of `web`"
    );
    let headless = section(&log, "headless");
    for ip in &db_ips {
        assert!(
            headless.contains(&format!("Address: {ip}")),
            "headless answer lacks {ip}: {log}"
        );
    }
    let srv = section(&log, "srv");
    for ip in &db_ips {
        let target = format!(
            "8080 {}.db.{NAMESPACE}.svc.cluster.local",
            ip.replace('.', "-")
        );
        assert!(srv.contains(&target), "SRV answer lacks {target}: {log}");
    }
    let pod = section(&log, "pod");
    let own_ip = pod
        .lines()
        .find_map(|l| l.strip_prefix("ip "))
        .expect("the client printed its IP")
        .trim();
    assert!(
        pod.contains(&format!("Address: {own_ip}")),
        "pod A record: {log}"
    );
    assert!(
        section(&log, "upstream").contains(&format!("Address: {UPSTREAM_ANSWER}")),
        "a name outside the cluster is forwarded upstream: {log}"
    );
    assert!(
        section(&log, "upstream-nx").contains("NXDOMAIN"),
        "the upstream's NXDOMAIN comes back: {log}"
    );
    let external = section(&log, "external");
    assert!(
        external.contains("canonical name = www.upstream.test")
            && external.contains(&format!("Address: {UPSTREAM_ANSWER}")),
        "an ExternalName service is a CNAME, resolved: {log}"
    );
    assert!(
        section(&log, "missing").contains("NXDOMAIN"),
        "a missing service is NXDOMAIN: {log}"
    );
    // `kubernetes.default` exists once the API server bootstrap creates the Service (busybox's
    // nslookup applies the search path only to names without a dot, so the FQDN is asked).
    if let Some(kubernetes) = cluster.get(&["service", "-n", "default", "kubernetes"]) {
        let ip = kubernetes["spec"]["clusterIP"].as_str().unwrap_or_default();
        assert!(
            section(&log, "kubernetes").contains(&format!("Address: {ip}")),
            "kubernetes.default: {log}"
        );
    } else {
        eprintln!("no default/kubernetes Service: the kubernetes.default check is skipped");
    }
}

#[test]
fn without_upstream_resolvers_outside_names_fail_fast() {
    let cluster = Cluster::start(false);
    let node = cluster.topology.node(0);
    let dns = SocketAddr::new(node.underlay_ip.into(), 53);
    // Cluster names still resolve (the apex SOA exists once the server answers at all).
    eventually("the agent's DNS to answer", PATIENCE, || {
        node.ns
            .run(|| {
                std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                    .and_then(|s| {
                        s.set_read_timeout(Some(Duration::from_millis(500)))?;
                        s.send_to(&question("nope.default.svc.cluster.local"), dns)?;
                        let mut buf = [0u8; 512];
                        s.recv(&mut buf)
                    })
                    .ok()
            })
            .expect("enter the node namespace")
    });
    let (rcode, _) = node
        .ns
        .run(|| udp_query(dns, "nope.default.svc.cluster.local"))
        .expect("enter the node namespace");
    assert_eq!(rcode, 3, "a missing service is NXDOMAIN");
    let started = std::time::Instant::now();
    let (rcode, addresses) = node
        .ns
        .run(|| udp_query(dns, "www.example.org"))
        .expect("enter the node namespace");
    assert_eq!(
        (rcode, addresses),
        (2, Vec::new()),
        "SERVFAIL without upstreams"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "SERVFAIL took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_dns_address_in_use_stops_the_agent_with_a_clear_error() {
    prereq::require_root();
    let server = TestServer::start(Backend::Sqlite).expect("start windlass server");
    let topology = Topology::builder().nodes(1).build().expect("topology");
    let node = topology.node(0);
    let taken = SocketAddr::new(node.underlay_ip.into(), 5353);
    let _holder = node
        .ns
        .run(|| std::net::UdpSocket::bind(taken))
        .expect("enter the node namespace")
        .expect("hold the address");
    let mut agent = TestAgent::start_with(
        &server,
        node,
        AgentOptions {
            extra_args: vec!["--dns-bind-address".into(), taken.to_string()],
            ..Default::default()
        },
    )
    .expect("start agent");
    eventually("the agent to exit", PATIENCE, || {
        agent.exited().then_some(())
    });
    let log = agent.log();
    assert!(
        log.contains(&format!("failed to bind the DNS server to udp {taken}")),
        "the agent's error names the address: {log}"
    );
}
