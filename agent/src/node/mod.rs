//! The node side of Windlass (`windlass agent`): the kubelet, the eBPF service proxy and the
//! node network (routes to other nodes' pods, masquerade). It speaks only the Kubernetes API to
//! the control plane.

pub mod dns;
pub mod join;
pub mod kubelet;
pub mod network;
pub mod proxy;
pub mod reset;
