//! Windlass: a Kubernetes node agent (kubelet, eBPF service proxy) with a small bundled control
//! plane. This library holds everything the `windlass` binary runs; `main.rs` and `cli.rs` only
//! parse the command line.
#![deny(missing_docs)]

pub mod control_plane;
pub mod ebpf;
pub mod node;
