//! `cargo xtask test`: installs missing dependencies, lints, builds the binaries and the test
//! images, then runs every unit and privileged test with cargo-nextest (cargo test when nextest
//! is absent), and finally the leak check, alone, once the suite is done.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{deps, images, paths};

/// Runs the whole suite; `args` are passed to the test runner (a filter, for example).
pub fn run(lint: bool, args: &[String]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the test suite builds network namespaces, cgroups and BPF programs: run \
             `cargo xtask test` as root"
        );
    }
    deps::ensure()?;
    if lint {
        paths::cargo(&["fmt", "--all", "--check"])?;
        paths::cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    // Integration tests run the real binaries (`windlass server`, ...), which test builds alone
    // do not produce, and import the test images (`cargo xtask images`; unchanged ones are
    // left alone).
    paths::cargo(&["build", "--workspace", "--bins"])?;
    images::run()?;
    let tools_bin = paths::tools_dir().join("bin");
    let nextest = has_nextest();
    let mut suite = test_command(nextest);
    suite.args(["--workspace"]);
    if !nextest {
        // cargo test stops at the first failing test binary without this.
        suite.arg("--no-fail-fast");
    }
    suite.args(args).env("WINDLASS_TOOLS_DIR", &tools_bin);
    let suite_result = paths::run(&mut suite);

    // The leak check runs even when the suite failed: leftovers are worth knowing about then.
    let mut leaks = test_command(nextest);
    leaks
        .args(["--package", "windlass-tests", "--test", "leak_check"])
        .env("WINDLASS_TOOLS_DIR", &tools_bin);
    let leak_result = paths::run(&mut leaks);
    suite_result?;
    leak_result
}

fn has_nextest() -> bool {
    Command::new(paths::cargo_bin())
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn test_command(nextest: bool) -> Command {
    let mut command = Command::new(paths::cargo_bin());
    if nextest {
        command.args(["nextest", "run", "--profile", "ci"]);
    } else {
        command.arg("test");
    }
    command
}
