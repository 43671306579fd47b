//! Windlass's CNI plugin as a library: the pieces the `windlass-cni` binary is made of, reusable
//! by the agent and the test harness.
//!
//! - [`config`]: the CNI environment and the network configuration, validated.
//! - [`result`], [`error`], [`version`]: what the plugin answers, in the configuration's version.
//! - [`plugin`]: the commands (ADD, DEL, CHECK, VERSION, STATUS, GC).
//! - [`bridge`]: bridge, veth pair and container-side setup.
//! - [`ipam`]: the built-in address allocator (one file per IP, flock, atomic reservations).
//! - [`netns`]: named network namespaces, entered on dedicated threads.
//! - [`netlink`]: links, addresses and routes over rtnetlink.
#![deny(missing_docs)]

pub mod bridge;
pub mod config;
pub mod error;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod result;
pub mod version;
