//! Masquerade: traffic from this node's pods to destinations outside the cluster CIDR leaves
//! with the node's address, as flannel and k3s do it: iptables (the `iptables-nft` binary is
//! fine) in a chain windlass owns, `WINDLASS-POSTROUTING` in the `nat` table, jumped to from
//! `POSTROUTING`.
//!
//! The chain's rules are replaced atomically with `iptables-restore --noflush` (declaring the
//! chain flushes it), so a restarted agent rewrites the same rules; the jump is added only when
//! `iptables -C` does not find it. [`remove`] takes both away again.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::desired::Cidr;

/// The chain windlass owns in the `nat` table.
pub const CHAIN: &str = "WINDLASS-POSTROUTING";
const COMMENT: &str = "windlass: masquerade pod traffic leaving the cluster";

/// Errors of the iptables calls.
#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    /// The binary could not be run.
    #[error("failed to run {program}")]
    Spawn {
        /// The binary.
        program: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The binary ran and failed.
    #[error("{program} {args} failed: {stderr}")]
    Failed {
        /// The binary.
        program: &'static str,
        /// Its arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// The `iptables-restore` input that makes [`CHAIN`] masquerade `pod_cidr` → anywhere but
/// `cluster_cidr` (and multicast).
pub fn ruleset(pod_cidr: Cidr, cluster_cidr: Cidr) -> String {
    format!(
        "*nat\n\
         :{CHAIN} - [0:0]\n\
         -A {CHAIN} -s {pod_cidr} -d {cluster_cidr} -m comment --comment \"pod to pod: keep the source\" -j RETURN\n\
         -A {CHAIN} -s {pod_cidr} -d 224.0.0.0/4 -m comment --comment \"multicast: keep the source\" -j RETURN\n\
         -A {CHAIN} -s {pod_cidr} -m comment --comment \"leaving the cluster: the node's address\" -j MASQUERADE --random-fully\n\
         COMMIT\n"
    )
}

fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<bool, MasqueradeError> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|source| MasqueradeError::Spawn { program, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| MasqueradeError::Spawn { program, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| MasqueradeError::Spawn { program, source })?;
    if out.status.success() {
        return Ok(true);
    }
    // `iptables -C` answers 1 for "no such rule"; anything else is a failure.
    if out.status.code() == Some(1) && args.contains(&"-C") {
        return Ok(false);
    }
    Err(MasqueradeError::Failed {
        program,
        args: args.join(" "),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn jump() -> [&'static str; 10] {
    [
        "-w",
        "-t",
        "nat",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        CHAIN,
    ]
}

fn with_op<'a>(op: &'a str, rule: &[&'a str]) -> Vec<&'a str> {
    // `-w -t nat <op> POSTROUTING ...`
    let mut args = rule[..3].to_vec();
    args.push(op);
    args.extend_from_slice(&rule[3..]);
    args
}

/// Writes the chain's rules and makes sure `POSTROUTING` jumps to it. Idempotent.
pub fn apply(pod_cidr: Cidr, cluster_cidr: Cidr) -> Result<(), MasqueradeError> {
    run(
        "iptables-restore",
        &["-w", "--noflush"],
        Some(&ruleset(pod_cidr, cluster_cidr)),
    )?;
    let rule = jump();
    if !run("iptables", &with_op("-C", &rule), None)? {
        run("iptables", &with_op("-A", &rule), None)?;
    }
    Ok(())
}

/// Removes the jump(s) and the chain; what is not there is fine.
pub fn remove() -> Result<(), MasqueradeError> {
    let rule = jump();
    while run("iptables", &with_op("-C", &rule), None).unwrap_or(false) {
        run("iptables", &with_op("-D", &rule), None)?;
    }
    let exists = run("iptables", &["-w", "-t", "nat", "-S", CHAIN], None).is_ok();
    if exists {
        run("iptables", &["-w", "-t", "nat", "-F", CHAIN], None)?;
        run("iptables", &["-w", "-t", "nat", "-X", CHAIN], None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_returns_cluster_traffic_and_masquerades_the_rest() {
        let pods = Cidr::parse("10.244.1.0/24").expect("cidr");
        let cluster = Cidr::parse("10.244.0.0/16").expect("cidr");
        let rules = ruleset(pods, cluster);
        assert!(rules.starts_with("*nat\n:WINDLASS-POSTROUTING - [0:0]\n"));
        assert!(rules.contains("-s 10.244.1.0/24 -d 10.244.0.0/16 "));
        assert!(rules.contains("-j MASQUERADE --random-fully\n"));
        assert!(rules.ends_with("COMMIT\n"));
        assert_eq!(
            with_op("-C", &jump())[..5],
            ["-w", "-t", "nat", "-C", "POSTROUTING"]
        );
    }
}
