//! `cargo xtask e2e`: the three-node walkthrough (`tests/e2e.rs`) on its own, with its
//! narration shown: a server and three agents in network namespaces, DNS, NodePort, a rolling
//! update with zero failed requests and a node loss. `cargo xtask test` runs it too.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{deps, images, paths};

/// Builds what the walkthrough runs and runs it.
pub fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the walkthrough builds network namespaces, cgroups and BPF programs: run `cargo xtask e2e` as root"
        );
    }
    deps::ensure()?;
    paths::cargo(&["build", "--workspace", "--bins"])?;
    images::run()?;
    paths::run(
        Command::new(paths::cargo_bin())
            .args([
                "test",
                "--package",
                "windlass-tests",
                "--test",
                "e2e",
                "--",
                "--nocapture",
            ])
            .env("WINDLASS_TOOLS_DIR", paths::tools_dir().join("bin")),
    )
}
