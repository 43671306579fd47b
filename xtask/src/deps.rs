//! `cargo xtask deps`: the Debian packages the build and the tests need, installed with apt when
//! missing, plus Debian's kubectl 1.20 unpacked into `target/tools` (another package may own
//! /usr/bin/kubectl here). Idempotent and silent when everything is present.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::paths;

/// Debian packages, each with what needs it.
const PACKAGES: &[(&str, &str)] = &[
    ("clang", "compiles ebpf/*.bpf.c"),
    ("llvm", "llvm-objdump/llvm-strip for inspecting BPF objects"),
    ("libbpf-dev", "bpf/bpf_helpers.h for ebpf/*.bpf.c"),
    ("bpftool", "inspecting loaded BPF programs and maps"),
    (
        "protobuf-compiler",
        "protoc, for etcd-client's generated gRPC code",
    ),
    (
        "libprotobuf-dev",
        "google/protobuf/*.proto includes for etcd-client",
    ),
    ("iproute2", "ip, tc, ss in tests and debugging"),
    ("runc", "the OCI runtime under windlass-shim"),
    ("busybox-static", "the test busybox image"),
    ("iperf3", "the test iperf3 image and throughput benchmarks"),
    ("etcd-server", "the etcd store tests"),
    ("containerd", "the CRI runtime tests"),
    (
        "containernetworking-plugins",
        "reference bridge + host-local for CNI benchmarks",
    ),
    (
        "nftables",
        "nft for masquerade and kube-proxy-shaped baselines",
    ),
    ("iptables", "the kube-proxy iptables baseline"),
    (
        "skopeo",
        "copying OCI images between layouts and registries",
    ),
    ("docker-registry", "a local registry for image pull tests"),
];

/// Debian's kubectl, unpacked project-locally.
const KUBECTL_PACKAGE: &str = "kubernetes-client";

/// The Kubernetes Python client from PyPI, installed into `target/tools/python` (a venv).
const PYTHON_CLIENT: &str = "kubernetes==37.0.2";

/// Installs whatever is missing; prints nothing when nothing is.
pub fn run(check_only: bool) -> Result<()> {
    let missing = missing_packages()?;
    let kubectl_ok = kubectl_present();
    let python_ok = python_client_present();
    if check_only {
        if missing.is_empty() && kubectl_ok && python_ok {
            return Ok(());
        }
        let mut lines: Vec<String> = missing
            .iter()
            .map(|p| format!("  {p}: {}", why(p)))
            .collect();
        if !kubectl_ok {
            lines.push(format!(
                "  {} (kubectl in {})",
                KUBECTL_PACKAGE,
                paths::tools_dir().join("bin").display()
            ));
        }
        if !python_ok {
            lines.push(format!(
                "  {PYTHON_CLIENT} (in {})",
                python_venv().display()
            ));
        }
        bail!("missing (run `cargo xtask deps`):\n{}", lines.join("\n"));
    }
    if !missing.is_empty() {
        install(&missing)?;
    }
    if !kubectl_ok {
        unpack_kubectl()?;
    }
    if !python_ok {
        install_python_client()?;
    }
    Ok(())
}

/// The venv holding the Python client.
fn python_venv() -> std::path::PathBuf {
    paths::tools_dir().join("python")
}

fn python_client_present() -> bool {
    Command::new(python_venv().join("bin/python"))
        .args(["-c", "import kubernetes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `python3 -m venv target/tools/python` + `pip install kubernetes==...` from PyPI.
fn install_python_client() -> Result<()> {
    let venv = python_venv();
    eprintln!(
        "xtask deps: installing the Python client ({PYTHON_CLIENT}) into {}",
        venv.display()
    );
    let _ = std::fs::remove_dir_all(&venv);
    crate::paths::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("python3 -m venv failed: is python3 (with venv) installed?")?;
    let out = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "-q",
            "--disable-pip-version-check",
            PYTHON_CLIENT,
        ])
        .output()
        .context("failed to run pip")?;
    if !out.status.success() {
        bail!(
            "pip install {PYTHON_CLIENT} failed (is PyPI reachable?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Installs what is missing, for tasks that need the dependencies (`test`, `up`).
pub fn ensure() -> Result<()> {
    run(false)
}

fn why(package: &str) -> &'static str {
    PACKAGES
        .iter()
        .find(|(p, _)| *p == package)
        .map(|(_, why)| *why)
        .unwrap_or("")
}

/// Packages from [`PACKAGES`] that dpkg does not report as installed.
fn missing_packages() -> Result<Vec<String>> {
    let names: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).collect();
    // Unknown packages make dpkg-query exit non-zero; its stdout still lists the known ones.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\\n"])
        .args(&names)
        .stderr(Stdio::null())
        .output()
        .context("failed to run dpkg-query: is this a Debian machine?")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let (name, status) = l.split_once(' ')?;
            status
                .starts_with("ii")
                .then_some(name.split(':').next().unwrap_or(name))
        })
        .collect();
    Ok(names
        .into_iter()
        .filter(|n| !installed.contains(n))
        .map(String::from)
        .collect())
}

fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root (apt-get): run `cargo xtask deps` as root");
    }
    Ok(())
}

fn apt_get(args: &[&str]) -> Result<std::process::Output> {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .with_context(|| format!("failed to run apt-get {}", args.join(" ")))
}

fn install(missing: &[String]) -> Result<()> {
    require_root("installing packages")?;
    eprintln!("xtask deps: installing {}", missing.join(" "));
    let update = apt_get(&["update", "-q"])?;
    if !update.status.success() {
        bail!(
            "apt-get update failed:\n{}",
            String::from_utf8_lossy(&update.stderr)
        );
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter().map(String::as_str));
    let out = apt_get(&args)?;
    if out.status.success() {
        return Ok(());
    }
    // Say which packages cannot be had, not just that apt failed.
    let unavailable: Vec<&str> = missing
        .iter()
        .map(String::as_str)
        .filter(|p| !has_candidate(p))
        .collect();
    if !unavailable.is_empty() {
        bail!(
            "these packages cannot be had from this machine's Debian sources: {}\n\
             (needed for: {})",
            unavailable.join(", "),
            unavailable
                .iter()
                .map(|p| why(p))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    bail!(
        "apt-get install {} failed:\n{}",
        missing.join(" "),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn has_candidate(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines()
                .find_map(|l| l.trim().strip_prefix("Candidate:"))
                .is_some_and(|c| c.trim() != "(none)")
        })
        .unwrap_or(false)
}

fn kubectl_present() -> bool {
    let kubectl = paths::tools_dir().join("bin/kubectl");
    Command::new(&kubectl)
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `apt-get download` + `dpkg -x` into `target/tools/kubernetes-client`, linked from
/// `target/tools/bin/kubectl`. Nothing outside the target dir is touched.
fn unpack_kubectl() -> Result<()> {
    let tools = paths::tools_dir();
    let download = tools.join("download");
    let unpacked = tools.join(KUBECTL_PACKAGE);
    let bin = tools.join("bin");
    for dir in [&download, &bin] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    eprintln!(
        "xtask deps: unpacking Debian's {KUBECTL_PACKAGE} into {}",
        unpacked.display()
    );
    let mut fetched = download_deb(&download)?;
    if fetched.is_none() {
        // The package lists may be stale or absent on a fresh machine.
        require_root("refreshing the package lists")?;
        let update = apt_get(&["update", "-q"])?;
        if !update.status.success() {
            bail!(
                "apt-get update failed:\n{}",
                String::from_utf8_lossy(&update.stderr)
            );
        }
        fetched = download_deb(&download)?;
    }
    let Some(deb) = fetched else {
        bail!(
            "{KUBECTL_PACKAGE} cannot be had from this machine's Debian sources (apt-get download failed)"
        );
    };
    let _ = std::fs::remove_dir_all(&unpacked);
    crate::paths::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    let target = unpacked.join("usr/bin/kubectl");
    if !target.is_file() {
        bail!("{} has no usr/bin/kubectl", deb.display());
    }
    let link = bin.join("kubectl");
    let _ = std::fs::remove_file(&link);
    // Relative, so the link survives the checkout moving.
    let relative = Path::new("..")
        .join(KUBECTL_PACKAGE)
        .join("usr/bin/kubectl");
    std::os::unix::fs::symlink(&relative, &link)
        .with_context(|| format!("link {}", link.display()))?;
    if !kubectl_present() {
        bail!("{} does not run", link.display());
    }
    Ok(())
}

fn download_deb(dir: &Path) -> Result<Option<std::path::PathBuf>> {
    let out = Command::new("apt-get")
        .args(["download", "-q", KUBECTL_PACKAGE])
        .current_dir(dir)
        .output()
        .context("failed to run apt-get download")?;
    if !out.status.success() {
        return Ok(None);
    }
    let deb = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(KUBECTL_PACKAGE) && n.ends_with(".deb"))
        });
    Ok(deb)
}
