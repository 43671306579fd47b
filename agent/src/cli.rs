//! The `windlass` command line: clap definitions only, no logic.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Windlass: a Kubernetes node agent, eBPF service proxy and small control plane.
#[derive(Debug, Parser)]
#[command(name = "windlass", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Which store `windlass server` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Store {
    /// Embedded SQLite in the data dir.
    Sqlite,
    /// An etcd cluster (`--etcd-endpoints`).
    Etcd,
}

/// The `windlass` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: a Kubernetes-compatible API server.
    Server {
        /// Where credentials, admin.kubeconfig and the embedded store live.
        #[arg(long, default_value = "/var/lib/windlass")]
        data_dir: PathBuf,
        /// HTTPS listen address.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// The store.
        #[arg(long, value_enum, default_value_t = Store::Sqlite)]
        store: Store,
        /// etcd client URLs, comma-separated (with --store etcd).
        #[arg(long, value_delimiter = ',')]
        etcd_endpoints: Vec<String>,
        /// Seconds between compactions of the store's history (kube-apiserver: 300).
        #[arg(long, default_value_t = 300)]
        compaction_interval_seconds: u64,
        /// The range nodes' pod CIDRs (/24 each) are cut from.
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: String,
        /// Seconds a node may go without renewing its Lease before it is marked unreachable.
        #[arg(long, default_value_t = 40)]
        node_monitor_grace_seconds: u64,
        /// Seconds pods stay on an unreachable node unless they tolerate it for another time.
        #[arg(long, default_value_t = 300)]
        default_toleration_seconds: u64,
        /// Run the API server alone, without the scheduler and controllers.
        #[arg(long)]
        disable_controllers: bool,
        /// The address pods and other nodes reach this server at (the `kubernetes` Service's
        /// endpoint; also in the serving certificate). Default: the listen address, or this
        /// host's first global IPv4 address when listening on all.
        #[arg(long)]
        advertise_address: Option<std::net::IpAddr>,
    },
    /// Run a single-node cluster on this host: the server (embedded SQLite) and an agent in one
    /// process. Ctrl-C stops both; pods keep running unless --stop-pods, and the next `up`
    /// re-adopts them.
    Up(Box<UpArgs>),
    /// Remove everything `windlass agent` or `windlass up` set up on this node (pods and their
    /// shims, cgroups, mounts, the bridge and routes, CNI state, BPF programs and pins, the
    /// cluster state in the data dir; images are kept), as `kubeadm reset` does. Idempotent.
    Reset(Box<ResetArgs>),
    /// Run the scheduler and controllers against an API server (like kube-controller-manager
    /// and kube-scheduler), apart from `windlass server --disable-controllers`.
    Controllers {
        /// A kubeconfig with admin rights (`<data-dir>/admin.kubeconfig`).
        #[arg(long)]
        kubeconfig: PathBuf,
        /// The range nodes' pod CIDRs (/24 each) are cut from.
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: String,
    },
    /// Run the node agent (the kubelet) against an API server.
    // Boxed: its flags make it far larger than the other variants (clippy::large_enum_variant).
    Agent(Box<AgentArgs>),
    /// Print the version and the embedded eBPF objects.
    Version,
    /// Inspect the eBPF service proxy's datapath on this node.
    Proxy {
        /// What to do.
        #[command(subcommand)]
        command: ProxyCommand,
    },
    /// Manage the images of the `oci` runtime's store (`<data-dir>/images`).
    Image {
        /// What to do.
        #[command(subcommand)]
        command: ImageCommand,
    },
}

/// The `windlass proxy` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Print the services and backends as the pinned maps hold them (works while the agent is
    /// down).
    Dump {
        /// The agent's `--bpf-root`.
        #[arg(long, default_value = "/sys/fs/bpf/windlass")]
        bpf_root: PathBuf,
        /// The node (default: the host name).
        #[arg(long)]
        node_name: Option<String>,
        /// `text` (one line per frontend) or `json`.
        #[arg(short, long, default_value = "text")]
        output: String,
    },
}

/// The `windlass image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import the images of an OCI archive (a tar of an OCI image layout, as `ctr images export`
    /// or `cargo xtask images` write).
    Import {
        /// The agent's data dir; images go to `<data-dir>/images`.
        #[arg(long, default_value = "/var/lib/windlass")]
        data_dir: PathBuf,
        /// The OCI archive.
        archive: PathBuf,
    },
    /// Pull an image from its registry into the store (anonymously; HTTPS, or plain HTTP for
    /// localhost, loopback addresses and --insecure-registry).
    Pull {
        /// The agent's data dir; images go to `<data-dir>/images`.
        #[arg(long, default_value = "/var/lib/windlass")]
        data_dir: PathBuf,
        /// A registry (`host` or `host:port`) that may be reached over plain HTTP; repeatable.
        /// The agent reads the same list from WINDLASS_INSECURE_REGISTRIES (comma-separated).
        #[arg(long = "insecure-registry", value_name = "REGISTRY")]
        insecure_registries: Vec<String>,
        /// The image reference, e.g. `docker.io/library/busybox:1.36` or
        /// `localhost:5000/test/busybox:1.0`.
        reference: String,
    },
    /// List the images in the store, like `crictl images`.
    Ls {
        /// The agent's data dir; images are in `<data-dir>/images`.
        #[arg(long, default_value = "/var/lib/windlass")]
        data_dir: PathBuf,
    },
}

/// `windlass up` flags.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Cluster state, credentials (`admin.kubeconfig`), images and node state.
    #[arg(long, default_value = "/var/lib/windlass")]
    pub data_dir: PathBuf,
    /// The API server's HTTPS listen address (all addresses, so pods and other nodes reach it).
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,
    /// The range nodes' pod CIDRs (/24 each) are cut from.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// On Ctrl-C, also stop and remove the node's pods (by default they keep running).
    #[arg(long)]
    pub stop_pods: bool,
    /// More `windlass agent` flags, after `--` (for example `-- --node-ip 192.0.2.2`).
    #[arg(last = true)]
    pub agent_args: Vec<String>,
}

/// `windlass reset` flags: the agent's, so it finds what that agent made.
#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// The data dir of `windlass up` / `windlass agent`.
    #[arg(long, default_value = "/var/lib/windlass")]
    pub data_dir: PathBuf,
    /// The Node's name (default: the host name); names the BPF pin dir.
    #[arg(long)]
    pub node_name: Option<String>,
    /// The agent's `--cgroup-root`.
    #[arg(long, default_value = "/")]
    pub cgroup_root: String,
    /// The agent's `--bpf-root`.
    #[arg(long, default_value = "/sys/fs/bpf/windlass")]
    pub bpf_root: PathBuf,
    /// The agent's `--bridge`.
    #[arg(long, default_value = "wl0")]
    pub bridge: String,
    /// The agent's `--service-cidr` (its unreachable route is removed).
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    /// The agent's `--cni-conf-dir`, if it wrote a conflist there.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
}

/// `windlass agent` flags.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// A kubeconfig for the API server (an admin one, or a node's from the join step). Without
    /// it or --server, the agent uses in-cluster credentials (when run as a DaemonSet).
    #[arg(long, conflicts_with_all = ["server", "token"])]
    pub kubeconfig: Option<PathBuf>,
    /// Join the cluster at this API server URL (with --token) instead of using a kubeconfig.
    #[arg(long, requires = "token")]
    pub server: Option<String>,
    /// The join token from the server's `<data-dir>/node-token` (`K10<CA hash>::<secret>`).
    #[arg(long, env = "WINDLASS_TOKEN", requires = "server")]
    pub token: Option<String>,
    /// The Node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's InternalIP (default: the first global IPv4 address).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// State: images, sandboxes, containers, pod volumes, CNI allocations.
    #[arg(long, default_value = "/var/lib/windlass")]
    pub data_dir: PathBuf,
    /// The cgroup the kubelet's `kubepods` tree goes under (`/` for the top).
    #[arg(long, default_value = "/")]
    pub cgroup_root: String,
    /// Where container logs go.
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_log_dir: PathBuf,
    /// The container runtime.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Oci)]
    pub runtime: RuntimeKind,
    /// The CRI socket of `--runtime cri` (a path or `unix://<path>`).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub container_runtime_endpoint: PathBuf,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// runc's state root (default: `<data-dir>/runc`).
    #[arg(long)]
    pub runc_root: Option<PathBuf>,
    /// The windlass-shim binary (default: next to this binary).
    #[arg(long)]
    pub shim: Option<PathBuf>,
    /// The windlass-cni binary (default: next to this binary).
    #[arg(long)]
    pub cni_plugin: Option<PathBuf>,
    /// Also write `10-windlass.conflist` here, for containerd's CRI plugin (default with
    /// `--runtime cri`: `/etc/cni/net.d`).
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// The pod bridge.
    #[arg(long, default_value = "wl0")]
    pub bridge: String,
    /// CrashLoopBackOff's first delay in seconds (kubelet: 10).
    #[arg(long, default_value_t = 10.0)]
    pub backoff_base_seconds: f64,
    /// pids.max of each pod cgroup (kubelet's --pod-max-pids); none by default.
    #[arg(long)]
    pub pod_max_pids: Option<i64>,
    /// Static pod manifests (YAML or JSON, one pod per file), run with or without an API server
    /// and shown there as mirror pods.
    #[arg(long)]
    pub manifest_dir: Option<PathBuf>,
    /// The kubelet HTTPS server's port (/healthz, /pods, /containerLogs) on the node IP; 0
    /// turns the server off.
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// The service proxy pins its maps and program links under `<bpf-root>/<node-name>/`.
    #[arg(long, default_value = "/sys/fs/bpf/windlass")]
    pub bpf_root: PathBuf,
    /// Do not run the kubelet: the agent only serves the node's network, proxy and DNS (as a
    /// DaemonSet on a cluster whose kubelet is the real one).
    #[arg(long)]
    pub disable_kubelet: bool,
    /// Do not run the eBPF service proxy (another proxy, such as kube-proxy, does the job).
    #[arg(long)]
    pub disable_proxy: bool,
    /// Do not set up the node network (routes to other nodes' podCIDRs, masquerade): another
    /// CNI or the host does the job.
    #[arg(long)]
    pub disable_network: bool,
    /// How packets reach pods on other nodes: `none` routes directly via the nodes' addresses
    /// (one L2 network), `vxlan` tunnels them (UDP 8472, flannel's scheme).
    #[arg(long, value_enum, default_value_t = Overlay::None)]
    pub overlay: Overlay,
    /// The range of all pod CIDRs; pod traffic to anywhere else leaves with the node's address.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// The service CIDR; it gets an unreachable route so a missed service address never
    /// leaves the node.
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    /// Where the proxy serves Prometheus metrics (`/metrics`); empty turns it off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,
    /// The nameserver pods with dnsPolicy ClusterFirst get (the kube-dns Service's ClusterIP);
    /// comma-separated, kubelet's flag.
    #[arg(long, default_value = "10.96.0.10", value_delimiter = ',')]
    pub cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster domain the agent's DNS serves and pods search.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Where the agent's DNS server listens, UDP and TCP (default: the node IP, port 53).
    #[arg(long)]
    pub dns_bind_address: Option<std::net::SocketAddr>,
    /// Do not serve cluster DNS (another DNS, such as CoreDNS, does the job).
    #[arg(long)]
    pub disable_dns: bool,
    /// The node's resolver configuration: the DNS server's upstreams and the pods' host DNS.
    #[arg(long, default_value = "/etc/resolv.conf", hide = true)]
    pub resolv_conf: PathBuf,
}

/// How the agent's node network reaches other nodes' pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Overlay {
    /// Direct routes via the peers' addresses (flannel host-gw).
    None,
    /// A VXLAN device (flannel's vxlan backend).
    Vxlan,
}

/// Which container runtime the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// runc under windlass-shim (the default).
    Oci,
    /// containerd over its CRI socket (`--container-runtime-endpoint`).
    Cri,
}
