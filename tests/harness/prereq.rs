//! Prerequisites of privileged tests. A missing one fails the test with a message that names the
//! step that provides it; no test is skipped silently.

use std::path::PathBuf;

/// Fails unless running as root (the tests create namespaces, links, cgroups and BPF programs).
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (namespaces, links, cgroups, BPF): run the suite as root with \
             `cargo xtask test`"
        );
    }
}

/// The path of `tool` on PATH, or a failure naming `cargo xtask deps`.
pub fn require_tool(tool: &str) -> PathBuf {
    which(tool).unwrap_or_else(|| {
        panic!(
            "`{tool}` is not installed: run `cargo xtask deps` (it installs the test prerequisites)"
        )
    })
}

/// Looks `tool` up on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Where `cargo xtask deps` unpacks project-local tools (`target/tools/bin`), or the directory
/// given in `WINDLASS_TOOLS_DIR`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("WINDLASS_TOOLS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin"),
    }
}

/// The Python interpreter of the venv where `cargo xtask deps` installs the `kubernetes`
/// client from PyPI.
pub fn python_client() -> PathBuf {
    let python = tools_dir().join("../python/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import kubernetes"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        panic!(
            "the Python kubernetes client ({}) is missing: run `cargo xtask deps`",
            python.display()
        );
    }
    python
}

/// Every kubectl the client-facing tests must pass against: the project-local one that
/// `cargo xtask deps` unpacks (Debian's kubernetes-client), and a different `kubectl` on PATH when
/// there is one.
pub fn kubectls() -> Vec<PathBuf> {
    let local = tools_dir().join("kubectl");
    if !local.is_file() {
        panic!(
            "the project-local kubectl ({}) is missing: run `cargo xtask deps`",
            local.display()
        );
    }
    let mut all = vec![local.clone()];
    if let Some(on_path) = which("kubectl") {
        let same = std::fs::canonicalize(&on_path).ok() == std::fs::canonicalize(&local).ok();
        if !same {
            all.push(on_path);
        }
    }
    all
}

/// A binary of this workspace: the path in `env_var` when set, else `target/debug/<name>`
/// (which `cargo xtask test` builds before the suite); a missing one fails with the command that
/// builds it.
pub fn workspace_binary(name: &str, env_var: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/debug")
                .join(name)
        });
    if !path.is_file() {
        panic!(
            "the {name} binary ({}) is missing: run `cargo xtask test` (it builds the binaries) \
             or `cargo build --workspace --bins`",
            path.display()
        );
    }
    path
}
