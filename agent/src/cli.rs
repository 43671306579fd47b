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
    },
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
    /// Print the version and the embedded eBPF objects.
    Version,
}
