//! The control plane: `windlass server`'s API server, its store, the scheduler and the
//! controllers. Nodes reach it only through the Kubernetes API.

pub mod apiserver;
pub mod controllers;
pub mod scheduler;
pub mod server;
pub mod store;
