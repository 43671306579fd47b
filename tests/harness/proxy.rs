//! What the service proxy's tests need beyond a cluster: the `wl-probe` client, the test images
//! (`cargo xtask images` and an image holding `wl-probe` for UDP), `windlass proxy dump`, pod
//! logs as the CRI log files hold them, and the agent's Prometheus metrics.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::oci_image::{self, Entry, Image};
use crate::topology::Node;
use crate::{HarnessError, io_err};

/// The reference of the image [`probe_image`] writes.
pub const PROBE_IMAGE: &str = "windlass.local/wl-probe:latest";

/// Where `wl-probe` is installed inside [`PROBE_IMAGE`].
pub const PROBE_IN_IMAGE: &str = "/bin/wl-probe";

/// The `wl-probe` client of this crate: `WL_PROBE_BIN`, or `target/debug/wl-probe` (built with
/// the workspace's binaries).
pub fn wl_probe_bin() -> PathBuf {
    crate::prereq::workspace_binary("wl-probe", "WL_PROBE_BIN")
}

/// `target/images/<name>.tar`, which `cargo xtask images` writes, or a failure naming it.
pub fn test_image(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/images")
        .join(format!("{name}.tar"));
    if !path.is_file() {
        panic!(
            "the test image {} is missing: run `cargo xtask images` (after `cargo xtask deps`)",
            path.display()
        );
    }
    path
}

/// Writes [`PROBE_IMAGE`] to `archive`: busybox (`sh`, `sleep`, `cat`, `echo`) plus `wl-probe`
/// and the shared libraries `ldd` lists for it, at the paths `ldd` gives. Pods use it to answer
/// UDP queries (busybox has no UDP server) and to query from inside a pod.
pub fn probe_image(archive: &Path) -> Result<(), HarnessError> {
    let probe = wl_probe_bin();
    let busybox = oci_image::require_static_busybox();
    let mut image = Image::from_reference(PROBE_IMAGE)?
        .entries(oci_image::busybox_rootfs(
            &busybox,
            &["sh", "sleep", "cat", "echo"],
        ))
        .entry(Entry::host_file(
            PROBE_IN_IMAGE.trim_start_matches('/'),
            0o755,
            &probe,
        ))
        .cmd(&["sh"]);
    for library in shared_libraries(&probe)? {
        let path = library
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        image = image.entry(Entry::host_file(&path, 0o755, &library));
    }
    image.write_archive(archive)?;
    Ok(())
}

/// The libraries and the loader `ldd` lists for `binary` (the vDSO has no file).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, HarnessError> {
    crate::prereq::require_tool("ldd");
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io_err("run ldd on", binary.display()))?;
    if !out.status.success() {
        return Err(HarnessError::Setup(format!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut libraries: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, target)) => target.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    libraries.sort();
    libraries.dedup();
    Ok(libraries)
}

/// `windlass proxy dump --bpf-root <bpf_root> --node-name <node> -o json`, parsed: the frontends
/// the datapath holds, each with its backends.
pub fn proxy_dump(bpf_root: &Path, node: &str) -> Result<serde_json::Value, HarnessError> {
    let bin = crate::apiserver::windlass_bin();
    let out = Command::new(&bin)
        .args(["proxy", "dump", "--bpf-root"])
        .arg(bpf_root)
        .args(["--node-name", node, "-o", "json"])
        .output()
        .map_err(io_err("run", "windlass proxy dump"))?;
    if !out.status.success() {
        return Err(HarnessError::Setup(format!(
            "windlass proxy dump failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        HarnessError::Setup(format!(
            "windlass proxy dump printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })
}

/// What container `container` of pod `namespace/pod` wrote so far, every attempt in order, from
/// the CRI log files under `log_dir` (`<ns>_<pod>_<uid>/<container>/<n>.log`) with the CRI
/// prefix (`<time> <stream> <tag> `) removed from each line.
pub fn pod_log(log_dir: &Path, namespace: &str, pod: &str, container: &str) -> String {
    let prefix = format!("{namespace}_{pod}_");
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|e| {
            std::fs::read_dir(e.path().join(container))
                .into_iter()
                .flatten()
        })
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let attempt = name.strip_suffix(".log")?.parse().ok()?;
            Some((attempt, e.path()))
        })
        .collect();
    files.sort();
    let mut text = String::new();
    for (_, file) in files {
        for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
            let mut fields = line.splitn(4, ' ').skip(2);
            let (Some(tag), Some(content)) = (fields.next(), fields.next()) else {
                continue;
            };
            text.push_str(content);
            // A `P` (partial) record continues on the next one.
            if !tag.starts_with('P') {
                text.push('\n');
            }
        }
    }
    text
}

/// The agent's Prometheus metrics: `GET /metrics` (HTTP/1.0, so the body is not chunked) on `127.0.0.1:<port>` inside `node` (the
/// agent's `--metrics-bind-address`, 127.0.0.1:10249 by default), the body as text.
pub fn metrics(node: &Node, port: u16) -> Result<String, HarnessError> {
    let response = node.ns.run(|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    })?;
    let response = response.map_err(io_err("GET /metrics on port", port))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(HarnessError::Setup(format!(
            "GET /metrics did not answer 200: {response}"
        ))),
    }
}
