//! OCI image archives written directly, with no registry and no image tool.
//!
//! An archive is a tar of an OCI image layout: `oci-layout`, `index.json` (one manifest, named by
//! the `org.opencontainers.image.ref.name` annotation) and `blobs/sha256/<digest>` holding one
//! uncompressed layer tar, the image config and the manifest. containerd imports it with
//! `ctr images import`, `windlass image import` reads the same layout, and skopeo can copy it.
//!
//! The writer is deterministic: the same [`Image`] always gives the same digests (every tar entry
//! has owner 0:0 and mtime 0), so repeated test runs do not pile up distinct images.
//!
//! This module depends only on std, `tar`, `ring`, `serde_json` and `thiserror`, with an error type
//! of its own, so `cargo xtask images` can reuse it for the test images.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};
use serde_json::json;

/// The annotation that names a manifest of `index.json` (OCI image-spec `annotations.md`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Media type of `index.json`.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer tar.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The pause image the CRI tests configure as containerd's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "windlass.local/pause:latest";
/// Debian's busybox-static, which `cargo xtask deps` installs.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Errors from building an image archive.
#[derive(Debug, thiserror::Error)]
pub enum OciImageError {
    /// Reading a source file or writing the archive failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A path inside the image is empty, or has `..` or empty components.
    #[error("invalid path {0:?} in image layer")]
    InvalidPath(String),
    /// Two entries of the layer have the same path.
    #[error("path {0:?} appears twice in image layer")]
    Duplicate(String),
    /// The image name or tag is not a valid reference.
    #[error("invalid image reference {0:?}")]
    InvalidReference(String),
    /// A JSON document could not be encoded.
    #[error("failed to encode the image {what}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(
    action: &'static str,
    path: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> OciImageError {
    let path = path.to_string();
    move |source| OciImageError::Io {
        action,
        path,
        source,
    }
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Contents {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The current contents of a file on the host (read when the archive is written).
    HostFile(PathBuf),
}

/// One entry of the image's single layer. Paths are relative to the image root; a leading `/`
/// is ignored. Missing parent directories are added with mode 0755.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Path inside the image.
        path: String,
        /// Permission bits, e.g. `0o755`.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path inside the image.
        path: String,
        /// Permission bits, e.g. `0o755`.
        mode: u32,
        /// Its contents.
        contents: Contents,
    },
    /// A symbolic link.
    Symlink {
        /// Path inside the image.
        path: String,
        /// What the link points to, as stored (relative or absolute).
        target: String,
    },
}

impl Entry {
    /// A directory with mode 0755.
    pub fn dir(path: &str) -> Self {
        Entry::Dir {
            path: path.to_string(),
            mode: 0o755,
        }
    }

    /// A file with these bytes.
    pub fn file(path: &str, mode: u32, bytes: impl Into<Vec<u8>>) -> Self {
        Entry::File {
            path: path.to_string(),
            mode,
            contents: Contents::Bytes(bytes.into()),
        }
    }

    /// A file copied from the host.
    pub fn host_file(path: &str, mode: u32, host: impl Into<PathBuf>) -> Self {
        Entry::File {
            path: path.to_string(),
            mode,
            contents: Contents::HostFile(host.into()),
        }
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(path: &str, target: &str) -> Self {
        Entry::Symlink {
            path: path.to_string(),
            target: target.to_string(),
        }
    }

    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// An image to write: a name, one layer and the process config.
#[derive(Debug, Clone)]
pub struct Image {
    /// Repository name without tag, e.g. `windlass.local/pause`.
    pub name: String,
    /// Tag, e.g. `latest`.
    pub tag: String,
    /// The layer's entries.
    pub entries: Vec<Entry>,
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `config.WorkingDir` (empty: not set).
    pub working_dir: String,
}

/// What [`Image::write_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImage {
    /// The full reference, `name:tag`, as annotated in `index.json`.
    pub reference: String,
    /// `sha256:...` of the manifest.
    pub manifest_digest: String,
    /// `sha256:...` of the config (the image ID as containerd and CRI report it).
    pub config_digest: String,
    /// `sha256:...` of the uncompressed layer (its diff ID).
    pub layer_digest: String,
    /// The archive written.
    pub archive: PathBuf,
}

impl Image {
    /// An empty image called `name:tag`.
    pub fn new(name: &str, tag: &str) -> Self {
        Image {
            name: name.to_string(),
            tag: tag.to_string(),
            entries: Vec::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: String::new(),
        }
    }

    /// Parses `name:tag` (the tag after the last `:` that follows the last `/`); no tag means
    /// `latest`.
    pub fn from_reference(reference: &str) -> Result<Self, OciImageError> {
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match reference[last_slash..].rfind(':') {
            Some(i) => (
                &reference[..last_slash + i],
                &reference[last_slash + i + 1..],
            ),
            None => (reference, "latest"),
        };
        let image = Image::new(name, tag);
        image.validate()?;
        Ok(image)
    }

    /// Adds a layer entry.
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// Adds layer entries.
    pub fn entries(mut self, entries: impl IntoIterator<Item = Entry>) -> Self {
        self.entries.extend(entries);
        self
    }

    /// Sets `config.Entrypoint`.
    pub fn entrypoint<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.entrypoint = args.iter().map(|a| a.as_ref().to_string()).collect();
        self
    }

    /// Sets `config.Cmd`.
    pub fn cmd<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.cmd = args.iter().map(|a| a.as_ref().to_string()).collect();
        self
    }

    /// Adds `KEY=value` to `config.Env`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }

    /// Sets `config.WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = dir.to_string();
        self
    }

    /// `name:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }

    fn validate(&self) -> Result<(), OciImageError> {
        let name_ok = !self.name.is_empty()
            && self.name.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:".contains(&b)
                    })
            });
        let tag_ok = !self.tag.is_empty()
            && self.tag.len() <= 128
            && self
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if name_ok && tag_ok {
            Ok(())
        } else {
            Err(OciImageError::InvalidReference(self.reference()))
        }
    }

    /// Writes the OCI archive to `out` (through a temporary file renamed into place).
    pub fn write_archive(&self, out: &Path) -> Result<WrittenImage, OciImageError> {
        self.validate()?;
        let layer = self.layer_tar()?;
        let layer_digest = sha256(&layer);
        let config = json_bytes("config", &self.config_json(&layer_digest))?;
        let config_digest = sha256(&config);
        let manifest = json_bytes(
            "manifest",
            &json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": descriptor(CONFIG_MEDIA_TYPE, &config_digest, config.len()),
                "layers": [descriptor(LAYER_MEDIA_TYPE, &layer_digest, layer.len())],
            }),
        )?;
        let manifest_digest = sha256(&manifest);
        let reference = self.reference();
        let mut manifest_descriptor =
            descriptor(MANIFEST_MEDIA_TYPE, &manifest_digest, manifest.len());
        manifest_descriptor["platform"] = json!({ "architecture": go_arch(), "os": "linux" });
        manifest_descriptor["annotations"] = json!({ REF_NAME_ANNOTATION: reference });
        let index = json_bytes(
            "index",
            &json!({
                "schemaVersion": 2,
                "mediaType": INDEX_MEDIA_TYPE,
                "manifests": [manifest_descriptor],
            }),
        )?;

        let tmp = out.with_extension("tar.partial");
        let file = std::fs::File::create(&tmp).map_err(io_err("create", tmp.display()))?;
        let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
        let write =
            |archive: &mut tar::Builder<std::io::BufWriter<std::fs::File>>| -> std::io::Result<()> {
                append_bytes(archive, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
                append_bytes(archive, "index.json", &index)?;
                append_dir(archive, "blobs/", 0o755)?;
                append_dir(archive, "blobs/sha256/", 0o755)?;
                for (digest, blob) in [
                    (&layer_digest, &layer),
                    (&config_digest, &config),
                    (&manifest_digest, &manifest),
                ] {
                    let hex = digest.trim_start_matches("sha256:");
                    append_bytes(archive, &format!("blobs/sha256/{hex}"), blob)?;
                }
                archive.finish()?;
                archive.get_mut().flush()
            };
        if let Err(e) = write(&mut archive) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err("write", tmp.display())(e));
        }
        drop(archive);
        std::fs::rename(&tmp, out).map_err(io_err("rename into place", out.display()))?;
        Ok(WrittenImage {
            reference,
            manifest_digest,
            config_digest,
            layer_digest,
            archive: out.to_path_buf(),
        })
    }

    fn config_json(&self, layer_digest: &str) -> serde_json::Value {
        let mut config = serde_json::Map::new();
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        if !self.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.working_dir.is_empty() {
            config.insert("WorkingDir".into(), json!(self.working_dir));
        }
        json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": go_arch(),
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "windlass test harness" }],
        })
    }

    /// The layer as an uncompressed tar: parents before children, each path once.
    fn layer_tar(&self) -> Result<Vec<u8>, OciImageError> {
        let mut explicit_dirs = BTreeMap::new();
        for entry in &self.entries {
            if let Entry::Dir { path, mode } = entry {
                explicit_dirs.insert(clean_path(path)?, *mode);
            }
        }
        let mut written: BTreeSet<String> = BTreeSet::new();
        let mut layer = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            let path = clean_path(entry.path())?;
            // Parents first, with their explicit mode when the image lists them.
            let components: Vec<&str> = path.split('/').collect();
            for depth in 1..components.len() {
                let parent = components[..depth].join("/");
                if written.insert(parent.clone()) {
                    let mode = explicit_dirs.get(&parent).copied().unwrap_or(0o755);
                    append_dir(&mut layer, &format!("{parent}/"), mode)
                        .map_err(io_err("add to layer", &parent))?;
                }
            }
            let fresh = written.insert(path.clone());
            match entry {
                // A directory already added as some file's parent is not a duplicate.
                Entry::Dir { mode, .. } => {
                    if fresh {
                        append_dir(&mut layer, &format!("{path}/"), *mode)
                            .map_err(io_err("add to layer", &path))?;
                    }
                }
                _ if !fresh => return Err(OciImageError::Duplicate(path)),
                Entry::File { mode, contents, .. } => {
                    let mut header = header(tar::EntryType::Regular, *mode);
                    match contents {
                        Contents::Bytes(bytes) => {
                            header.set_size(bytes.len() as u64);
                            layer.append_data(&mut header, &path, bytes.as_slice())
                        }
                        Contents::HostFile(host) => {
                            let file = std::fs::File::open(host)
                                .map_err(io_err("open", host.display()))?;
                            let len = file
                                .metadata()
                                .map_err(io_err("stat", host.display()))?
                                .len();
                            header.set_size(len);
                            layer.append_data(&mut header, &path, file.take(len))
                        }
                    }
                    .map_err(io_err("add to layer", &path))?;
                }
                Entry::Symlink { target, .. } => {
                    let mut header = header(tar::EntryType::Symlink, 0o777);
                    layer
                        .append_link(&mut header, &path, target)
                        .map_err(io_err("add to layer", &path))?;
                }
            }
        }
        layer.into_inner().map_err(io_err("finish", "layer tar"))
    }
}

/// The root filesystem of a busybox image: `/bin/busybox` copied from `busybox` (a static
/// binary) and `/bin/<applet>` symlinks to it, plus the directories runc expects to mount on.
pub fn busybox_rootfs(busybox: &Path, applets: &[&str]) -> Vec<Entry> {
    let mut entries = vec![Entry::host_file("bin/busybox", 0o755, busybox)];
    entries.extend(
        applets
            .iter()
            .map(|applet| Entry::symlink(&format!("bin/{applet}"), "busybox")),
    );
    entries.extend(["dev", "proc", "sys", "etc", "var", "run"].map(Entry::dir));
    entries.push(Entry::Dir {
        path: "tmp".into(),
        mode: 0o1777,
    });
    entries
}

/// The pause image ([`PAUSE_IMAGE`]): busybox with `sh` and `sleep`, whose entrypoint sleeps
/// forever as PID 1. The runtime stops a sandbox with SIGKILL, so it needs no signal handling.
pub fn pause_image(busybox: &Path) -> Result<Image, OciImageError> {
    Ok(Image::from_reference(PAUSE_IMAGE)?
        .entries(busybox_rootfs(busybox, &["sh", "sleep"]))
        .entrypoint(&["/bin/sleep", "infinity"]))
}

/// [`HOST_BUSYBOX`] if it is a static executable (Debian's busybox-static; the dynamic `busybox`
/// package would not run in an image without its libc), or a failure naming `cargo xtask deps`.
pub fn require_static_busybox() -> PathBuf {
    let path = PathBuf::from(HOST_BUSYBOX);
    match is_static_elf(&path) {
        Ok(true) => path,
        Ok(false) => panic!(
            "{HOST_BUSYBOX} is dynamically linked: install busybox-static with `cargo xtask deps`"
        ),
        Err(e) => panic!(
            "{HOST_BUSYBOX} is missing or unreadable ({e}): run `cargo xtask deps` (it installs \
             busybox-static)"
        ),
    }
}

/// Whether `path` is a 64-bit little-endian ELF file without a program interpreter
/// (`PT_INTERP`), i.e. statically linked.
pub fn is_static_elf(path: &Path) -> Result<bool, OciImageError> {
    let mut file = std::fs::File::open(path).map_err(io_err("open", path.display()))?;
    let mut head = vec![0u8; 64 * 1024];
    let len = file
        .read(&mut head)
        .map_err(io_err("read", path.display()))?;
    let head = &head[..len];
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?).into())
    };
    let u64_at = |at: usize| -> Option<usize> {
        usize::try_from(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?)).ok()
    };
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB.
    if head.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Ok(false);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Ok(false);
    };
    const PT_INTERP: u32 = 3;
    let mut has_interp = false;
    for i in 0..phnum {
        let kind = i
            .checked_mul(phentsize)
            .and_then(|offset| offset.checked_add(phoff))
            .and_then(|at| head.get(at..at.checked_add(4)?));
        let Some(kind) = kind else {
            return Ok(false);
        };
        has_interp |= u32::from_le_bytes([kind[0], kind[1], kind[2], kind[3]]) == PT_INTERP;
    }
    Ok(!has_interp)
}

fn clean_path(path: &str) -> Result<String, OciImageError> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let valid = !trimmed.is_empty()
        && trimmed
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if valid {
        Ok(trimmed.to_string())
    } else {
        Err(OciImageError::InvalidPath(path.to_string()))
    }
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    header
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Directory, mode);
    builder.append_data(&mut header, path, std::io::empty())
}

fn append_bytes<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Regular, 0o644);
    header.set_size(bytes.len() as u64);
    builder.append_data(&mut header, path, bytes)
}

fn sha256(bytes: &[u8]) -> String {
    let hash = digest(&SHA256, bytes);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

fn json_bytes(what: &'static str, value: &serde_json::Value) -> Result<Vec<u8>, OciImageError> {
    serde_json::to_vec(value).map_err(|source| OciImageError::Json { what, source })
}

/// This machine's architecture in Go's (and OCI's) spelling.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let file = std::fs::File::open(path).expect("open archive");
        let mut archive = tar::Archive::new(file);
        let mut files = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("read entry");
            files.insert(name, bytes);
        }
        files
    }

    #[test]
    fn archive_is_an_oci_layout_with_matching_digests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("img.tar");
        let image = Image::from_reference("windlass.local/t:v1")
            .expect("reference")
            .entry(Entry::file("/etc/hello", 0o644, "hi\n"))
            .entry(Entry::symlink("bin/sh", "busybox"))
            .entrypoint(&["/bin/sh"]);
        let written = image.write_archive(&out).expect("write");
        assert_eq!(written.reference, "windlass.local/t:v1");
        let files = read_archive(&out);
        assert!(files.contains_key("oci-layout"));
        let index: serde_json::Value =
            serde_json::from_slice(&files["index.json"]).expect("index json");
        let manifest_desc = &index["manifests"][0];
        assert_eq!(
            manifest_desc["annotations"][REF_NAME_ANNOTATION],
            "windlass.local/t:v1"
        );
        for (digest, blob_name) in [
            (&written.manifest_digest, "manifest"),
            (&written.config_digest, "config"),
            (&written.layer_digest, "layer"),
        ] {
            let blob = &files[&format!("blobs/sha256/{}", &digest[7..])];
            assert_eq!(&sha256(blob), digest, "{blob_name} digest");
        }
        let layer = &files[&format!("blobs/sha256/{}", &written.layer_digest[7..])];
        let mut names = Vec::new();
        for entry in tar::Archive::new(layer.as_slice())
            .entries()
            .expect("layer")
        {
            names.push(
                entry
                    .expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string(),
            );
        }
        assert_eq!(names, ["etc/", "etc/hello", "bin/", "bin/sh"]);
        // Deterministic: writing again gives the same digests.
        let again = image.write_archive(&out).expect("write again");
        assert_eq!(again, written);
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        // The test binary itself is dynamically linked against libc.
        let me = std::env::current_exe().expect("current exe");
        assert!(!is_static_elf(&me).expect("read test binary"));
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("text");
        std::fs::write(&text, "not an ELF file").expect("write");
        assert!(!is_static_elf(&text).expect("read text"));
    }

    #[test]
    fn references_parse_and_bad_paths_fail() {
        let image = Image::from_reference("localhost:5000/a/b").expect("no tag");
        assert_eq!(image.reference(), "localhost:5000/a/b:latest");
        assert!(Image::from_reference("UPPER case").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = Image::new("x", "y").entry(Entry::file("../etc", 0o644, ""));
        assert!(matches!(
            bad.write_archive(&dir.path().join("x.tar")),
            Err(OciImageError::InvalidPath(_))
        ));
        let dup = Image::new("x", "y")
            .entry(Entry::file("a", 0o644, ""))
            .entry(Entry::file("a", 0o644, ""));
        assert!(matches!(
            dup.write_archive(&dir.path().join("x.tar")),
            Err(OciImageError::Duplicate(_))
        ));
    }
}
