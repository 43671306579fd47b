//! Windlass's CNI plugin as a library: the pieces the `windlass-cni` binary is made of, reusable
//! by the agent and the test harness.
//!
//! - [`ipam`]: the built-in address allocator (one file per IP, flock, atomic reservations).
//! - [`netns`]: named network namespaces, entered on dedicated threads.
//! - [`netlink`]: links, addresses and routes over rtnetlink.
#![deny(missing_docs)]

pub mod ipam;
pub mod netlink;
pub mod netns;
