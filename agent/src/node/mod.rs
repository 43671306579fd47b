//! The node side of Windlass (`windlass agent`): the kubelet and the eBPF service proxy (the
//! node network comes later). It speaks only the Kubernetes API to the control plane.

pub mod join;
pub mod kubelet;
pub mod proxy;
