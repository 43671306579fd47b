//! `cargo xtask up`: the README's first command. Installs what is missing (`cargo xtask deps`),
//! builds the release binaries, writes the test images and imports them into the node's image
//! store, then replaces itself with `windlass up`, so Ctrl-C reaches the cluster directly.

use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{deps, images, paths};

/// Runs `windlass up --data-dir <data_dir> [-- <agent flags>]`; returns only on failure.
pub fn run(data_dir: &str, stop_pods: bool, agent_args: &[String]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "windlass up runs pods, a pod network and BPF programs on this host: run `cargo xtask \
             up` as root"
        );
    }
    deps::ensure()?;
    paths::cargo(&["build", "--release", "--workspace", "--bins"])?;
    images::run()?;
    let bin = paths::target_dir().join("release");
    let windlass = bin.join("windlass");
    for image in ["busybox", "iperf3"] {
        let archive = paths::target_dir()
            .join("images")
            .join(format!("{image}.tar"));
        let out = Command::new(&windlass)
            .args(["image", "import", "--data-dir", data_dir])
            .arg(&archive)
            .output()
            .with_context(|| format!("failed to start {}", windlass.display()))?;
        if !out.status.success() {
            bail!(
                "importing {} failed: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let mut up = Command::new(&windlass);
    up.args(["up", "--data-dir", data_dir]);
    if stop_pods {
        up.arg("--stop-pods");
    }
    if !agent_args.is_empty() {
        up.arg("--").args(agent_args);
    }
    // runc and the CNI plugin come from PATH or beside the binary: both are in place.
    let error = up.exec();
    Err(error).with_context(|| format!("failed to start {}", windlass.display()))
}
