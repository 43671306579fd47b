//! The node side of Windlass (`windlass agent`): the kubelet, and later the node network and the
//! eBPF service proxy. It speaks only the Kubernetes API to the control plane.

pub mod join;
pub mod kubelet;
