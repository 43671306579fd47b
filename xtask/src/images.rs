//! `cargo xtask images`: the OCI archives the tests and `windlass image import` use, written into
//! `target/images/` with the test harness's writer (no registry, no image tool):
//!
//! - `busybox.tar`, `windlass.local/busybox:latest`: Debian's busybox-static at `/bin/busybox`, a
//!   `/bin/<applet>` symlink for every applet `busybox --list` names, `/etc/passwd` and
//!   `/etc/group` with root and nobody, `/tmp` mode 1777; default command `sh`.
//! - `iperf3.tar`, `windlass.local/iperf3:latest`: `/usr/bin/iperf3` with every shared library
//!   `ldd` lists and the dynamic loader, each at the path `ldd` gives; entrypoint `iperf3`.
//!
//! - `windlass.tar`, `windlass.local/windlass:latest` (only with `--windlass`): the DaemonSet image
//!   of `deploy/windlass.yaml`. `windlass`, `windlass-cni` and `windlass-shim` from
//!   `target/release` (or `target/debug`) in `/usr/local/bin`, the shared libraries `ldd` lists for
//!   them, and Debian's busybox-static with its applets (the init container's `sh`, `cp`, `mv`);
//!   entrypoint `windlass`. The binaries are not built here: run `cargo build --release --bins`.
//!
//! The output is deterministic (the writer fixes owners and mtimes), and an archive whose bytes
//! would not change is left alone, so running the task twice rewrites nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::paths;

// The harness's archive writer, shared so the tests and the task write identical archives.
#[allow(
    dead_code,
    reason = "xtask uses only part of the test harness's writer"
)]
#[path = "../../tests/harness/oci_image.rs"]
pub(crate) mod oci_image;

use oci_image::{Entry, HOST_BUSYBOX, Image};

/// The reference of the busybox image.
const BUSYBOX_IMAGE: &str = "windlass.local/busybox:latest";
/// The reference of the iperf3 image.
const IPERF3_IMAGE: &str = "windlass.local/iperf3:latest";
/// The reference of the DaemonSet image (`deploy/windlass.yaml`).
const WINDLASS_IMAGE: &str = "windlass.local/windlass:latest";
/// The binaries the DaemonSet image carries, in `/usr/local/bin`.
const WINDLASS_BINARIES: [&str; 3] = ["windlass", "windlass-cni", "windlass-shim"];
/// Where the host's iperf3 is (Debian's `iperf3` package, which `cargo xtask deps` installs).
const HOST_IPERF3: &str = "/usr/bin/iperf3";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

/// Writes the test archives (`busybox.tar`, `iperf3.tar`) into `target/images/`.
pub fn run() -> Result<()> {
    write_all(vec![
        ("busybox.tar", busybox_image()?),
        ("iperf3.tar", iperf3_image()?),
    ])
}

/// Writes the DaemonSet archive `windlass.tar` into `target/images/`, from the binaries in
/// `target/<profile>/` (`release` or `debug`).
pub fn run_windlass(profile: &str) -> Result<()> {
    write_all(vec![("windlass.tar", windlass_image(profile)?)])
}

fn write_all(images: Vec<(&str, Image)>) -> Result<()> {
    let dir = paths::target_dir().join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, image) in images {
        let out = dir.join(file);
        let changed = write_if_changed(&image, &out)?;
        println!(
            "{} {} ({})",
            if changed { "wrote" } else { "unchanged" },
            out.display(),
            image.reference()
        );
    }
    Ok(())
}

/// Writes `image` to `out` unless `out` already holds exactly these bytes. Returns whether it
/// wrote.
fn write_if_changed(image: &Image, out: &Path) -> Result<bool> {
    let fresh = out.with_extension("new.tar");
    image
        .write_archive(&fresh)
        .with_context(|| format!("cannot write {}", fresh.display()))?;
    let unchanged = match (std::fs::read(&fresh), std::fs::read(out)) {
        (Ok(new), Ok(old)) => new == old,
        _ => false,
    };
    if unchanged {
        std::fs::remove_file(&fresh)
            .with_context(|| format!("cannot remove {}", fresh.display()))?;
    } else {
        std::fs::rename(&fresh, out)
            .with_context(|| format!("cannot move {} into place", out.display()))?;
    }
    Ok(!unchanged)
}

fn busybox_image() -> Result<Image> {
    Ok(Image::from_reference(BUSYBOX_IMAGE)?
        .entries(static_busybox_rootfs()?)
        .entry(Entry::file("etc/passwd", 0o644, PASSWD))
        .entry(Entry::file("etc/group", 0o644, GROUP))
        .entry(Entry::Dir {
            path: "root".into(),
            mode: 0o700,
        })
        .cmd(&["sh"]))
}

/// Debian's busybox-static at `/bin/busybox` with a `/bin/<applet>` symlink for every applet
/// `busybox --list` names, and the directories runc mounts on.
fn static_busybox_rootfs() -> Result<Vec<Entry>> {
    let busybox = Path::new(HOST_BUSYBOX);
    let is_static = oci_image::is_static_elf(busybox)
        .with_context(|| format!("cannot read {HOST_BUSYBOX}: run `cargo xtask deps`"))?;
    if !is_static {
        bail!(
            "{HOST_BUSYBOX} is not statically linked: install busybox-static (`cargo xtask deps`)"
        );
    }
    let listing = output(Command::new(busybox).arg("--list"))?;
    let mut applets: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|applet| !applet.is_empty() && *applet != "busybox" && !applet.contains('/'))
        .collect();
    applets.sort_unstable();
    applets.dedup();
    Ok(oci_image::busybox_rootfs(busybox, &applets))
}

fn iperf3_image() -> Result<Image> {
    if !Path::new(HOST_IPERF3).is_file() {
        bail!("{HOST_IPERF3} is missing: run `cargo xtask deps` (it installs iperf3)");
    }
    let mut image = Image::from_reference(IPERF3_IMAGE)?
        .entry(Entry::host_file("usr/bin/iperf3", 0o755, HOST_IPERF3))
        .entries(["dev", "proc", "sys", "etc"].map(Entry::dir))
        .entry(Entry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        })
        .entry(Entry::file("etc/passwd", 0o644, PASSWD))
        .entry(Entry::file("etc/group", 0o644, GROUP))
        .entrypoint(&["iperf3"]);
    for library in shared_libraries(Path::new(HOST_IPERF3))? {
        let path = library.to_string_lossy().into_owned();
        image = image.entry(Entry::host_file(&path, 0o755, &library));
    }
    Ok(image)
}

/// The DaemonSet image: the three binaries of `target/<profile>/`, their shared libraries, and
/// busybox for the init container's shell.
fn windlass_image(profile: &str) -> Result<Image> {
    let bin_dir = paths::target_dir().join(profile);
    let build = if profile == "release" {
        "cargo build --release --bins"
    } else {
        "cargo build --bins"
    };
    let mut image = Image::from_reference(WINDLASS_IMAGE)?
        .entries(static_busybox_rootfs()?)
        .entry(Entry::file("etc/passwd", 0o644, PASSWD))
        .entry(Entry::file("etc/group", 0o644, GROUP))
        .env("PATH", "/usr/local/bin:/bin")
        .entrypoint(&["/usr/local/bin/windlass"]);
    let mut libraries = Vec::new();
    for name in WINDLASS_BINARIES {
        let binary = bin_dir.join(name);
        if !binary.is_file() {
            bail!(
                "{} is missing: run `{build}` first (the image task does not build)",
                binary.display()
            );
        }
        image = image.entry(Entry::host_file(
            &format!("usr/local/bin/{name}"),
            0o755,
            &binary,
        ));
        libraries.extend(shared_libraries(&binary)?);
    }
    libraries.sort();
    libraries.dedup();
    for library in libraries {
        let path = library.to_string_lossy().into_owned();
        image = image.entry(Entry::host_file(&path, 0o755, &library));
    }
    Ok(image)
}

/// The shared libraries and the dynamic loader `ldd` lists for `binary`, sorted.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let listing = output(Command::new("ldd").arg(binary))?;
    parse_ldd(&listing).with_context(|| format!("ldd {}", binary.display()))
}

/// Parses `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and the loader's
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file and is skipped.
fn parse_ldd(listing: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.split_whitespace().next().unwrap_or_default();
                if target == "not" {
                    bail!("{} is not found", name.trim());
                }
                target
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    libraries.sort();
    libraries.dedup();
    if libraries.is_empty() {
        bail!("ldd listed no libraries");
    }
    Ok(libraries)
}

fn output(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .with_context(|| format!("failed to start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{shown} printed non-UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2d)\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007f2e)\n";
        assert_eq!(
            parse_ldd(listing).expect("parse"),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibx.so => not found\n").is_err());
    }
}
