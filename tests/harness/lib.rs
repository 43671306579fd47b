//! The test harness for Windlass's privileged integration tests.
//!
//! Tests build their own world and leave nothing behind:
//! - [`apiserver`]: a real `windlass server` process per test, on SQLite or etcd.
//! - [`topology`]: nodes as network namespaces on a fabric bridge (underlay 192.0.2.0/24), pods as
//!   namespaces behind veths, removed on drop, also after a panic.
//! - [`cni`]: running CNI plugins as libcni and containerd do.
//! - [`containerd`]: a private containerd (CRI plugin, runc) inside a node namespace, driven
//!   through a CRI client; [`oci_image`] writes the OCI image archives it imports.
//! - [`runc`]: busybox bundles and a private runc root whose containers and cgroups go on drop.
//! - [`cgroup`] and [`bpffs`]: a cgroup v2 subtree and a BPF pin directory per test.
//! - [`proxy`]: the service proxy's tests' client (`wl-probe`), images, `windlass proxy dump`,
//!   pod logs and metrics.
//! - [`traffic`]: an echo server and a client that run inside namespaces.
//! - [`fake_kubelet`]: fake nodes and a watch-driven fake kubelet for controller tests.
//! - [`etcd`]: a real etcd on loopback ports for store tests.
//! - [`wait`]: waiting on a condition with a deadline.
//! - [`leaks`]: finds anything left with the test prefix; `cargo xtask test` runs it last.
//! - [`prereq`]: fails a test with a message naming the `cargo xtask deps` step when something it
//!   needs is missing; nothing is skipped silently.
#![deny(missing_docs)]

pub mod agent;
pub mod apiserver;
pub mod bpffs;
pub mod cgroup;
pub mod cni;
pub mod containerd;
pub mod etcd;
pub mod fake_kubelet;
pub mod leaks;
pub mod multinode;
pub mod oci_image;
pub mod prefix;
pub mod prereq;
pub mod proxy;
pub mod runc;
pub mod topology;
pub mod traffic;
pub mod wait;

pub use windlass_cni::netns::NetNs;

/// Errors from building test fixtures; tests `expect()` them.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A namespace operation failed.
    #[error(transparent)]
    NetNs(#[from] windlass_cni::netns::NetNsError),
    /// A netlink operation failed.
    #[error(transparent)]
    Netlink(#[from] windlass_cni::netlink::NetlinkError),
    /// A filesystem operation failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A CRI call answered with an error.
    #[error("CRI {call} failed")]
    Cri {
        /// Which call (`RunPodSandbox`, ...).
        call: &'static str,
        /// The gRPC status, with the runtime's message (a CNI error, for instance).
        #[source]
        source: Box<tonic::Status>,
    },
    /// An OCI image archive could not be written.
    #[error(transparent)]
    OciImage(#[from] oci_image::OciImageError),
    /// The fixture could not be set up for another reason.
    #[error("{0}")]
    Setup(String),
}

pub(crate) fn io_err(
    action: &'static str,
    path: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> HarnessError {
    let path = path.to_string();
    move |source| HarnessError::Io {
        action,
        path,
        source,
    }
}
