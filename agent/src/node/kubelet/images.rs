//! The image store: OCI images imported or pulled into the data dir, unpacked layers for overlayfs.
//!
//! Images arrive two ways, which share everything after fetching: as OCI archives (a tar of an
//! OCI image layout, as `ctr images export`, `skopeo copy oci-archive:` and the test harness write
//! them) through `windlass image import` ([`ImageStore::import`]), and from a registry through
//! `windlass image pull` and the kubelet ([`ImageStore::pull`], the OCI distribution API through
//! `oci-client`: HTTPS, plain HTTP only for loopback and [`INSECURE_REGISTRIES_ENV`] registries,
//! anonymous bearer tokens, every blob streamed to disk and verified). Everything lives under
//! `<data-dir>/images/`:
//!
//! - `blobs/sha256/<hex>`: manifests, configs and layer blobs as imported, content-addressed;
//! - `index.json`: `{"<normalised reference>": "sha256:<manifest digest>"}`, replaced atomically
//!   (written to a temporary file, then renamed);
//! - `layers/<hex of the diff ID>/`: each layer unpacked once, an overlayfs lowerdir, with OCI
//!   whiteouts turned into overlayfs ones (a 0/0 character device per deleted path, the
//!   `trusted.overlay.opaque=y` xattr on an opaque directory);
//! - `tmp/`: imports and pulls stage blobs and unpack layers here and rename them into place, so
//!   a crash never leaves half a blob or half a layer where readers look;
//! - `lock`: `flock`ed by an import or a pull (for all of it, so pulls are serialised as the
//!   kubelet's are by default), so two of them (even from two processes) do not lose each
//!   other's index updates. Readers need no lock: they only see whole files.
//!
//! References are normalised as Kubernetes and containerd do: `busybox` is
//! `docker.io/library/busybox:latest`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde::Deserialize;

/// The annotation that names a manifest in `index.json` (OCI image-spec `annotations.md`): a full
/// reference, or only a tag.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd's exports add with the full image name.
pub const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";

/// The largest JSON document (index, manifest, config) the store reads.
const MAX_JSON_BYTES: u64 = 16 << 20;
/// How deep nested image indexes may go.
const MAX_INDEX_DEPTH: usize = 4;

/// Errors from the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file of the store could not be read or written.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The archive is not a readable tar.
    #[error("failed to read image archive {archive} as a tar")]
    Archive {
        /// The archive.
        archive: PathBuf,
        /// What the tar reader said.
        #[source]
        source: io::Error,
    },
    /// The archive ends in the middle of a file.
    #[error("image archive {archive} is truncated: {entry} has {actual} of its {expected} bytes")]
    Truncated {
        /// The archive.
        archive: PathBuf,
        /// The file of the archive that is cut short.
        entry: String,
        /// The size in its tar header.
        expected: u64,
        /// The bytes there are.
        actual: u64,
    },
    /// The archive is a tar but not a usable OCI image layout.
    #[error("image archive {archive} is not an OCI image layout: {reason}")]
    NotOciLayout {
        /// The archive.
        archive: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest is malformed or uses an algorithm other than sha256.
    #[error("unsupported or malformed digest {0:?}")]
    InvalidDigest(String),
    /// A blob's contents do not hash to its name.
    #[error("blob {expected} does not match its digest (its contents hash to {actual})")]
    DigestMismatch {
        /// The digest the blob is named by.
        expected: String,
        /// The digest of what it holds.
        actual: String,
    },
    /// A blob's size differs from its descriptor's.
    #[error("blob {digest} has {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// The size in the descriptor.
        expected: u64,
        /// The size of the blob.
        actual: u64,
    },
    /// A blob an image needs is neither in the archive nor in the store.
    #[error("blob {0} is missing")]
    MissingBlob(String),
    /// A JSON document could not be decoded.
    #[error("invalid {what} {digest}")]
    InvalidJson {
        /// Which document (`manifest`, `image config`, ...).
        what: &'static str,
        /// Its digest or path.
        digest: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest or layer has a media type the store cannot use (zstd layers, for instance).
    #[error("unsupported media type {media_type:?} of {digest}")]
    UnsupportedMediaType {
        /// The descriptor's media type.
        media_type: String,
        /// The blob.
        digest: String,
    },
    /// The config's `rootfs.diff_ids` do not pair up with the manifest's layers.
    #[error("image config {config} lists {diff_ids} diff IDs for {layers} layers")]
    LayerCount {
        /// The config digest.
        config: String,
        /// How many diff IDs the config lists.
        diff_ids: usize,
        /// How many layers the manifest lists.
        layers: usize,
    },
    /// A layer could not be unpacked.
    #[error("failed to unpack layer {digest}")]
    Unpack {
        /// The layer blob.
        digest: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// An unpacked layer does not hash to the diff ID the config gives it.
    #[error("layer {digest} unpacks to diff ID {actual}, the image config says {expected}")]
    DiffIdMismatch {
        /// The layer blob.
        digest: String,
        /// The diff ID in the config.
        expected: String,
        /// The digest of the uncompressed layer.
        actual: String,
    },
    /// An image reference is not valid.
    #[error("invalid image reference {0:?}")]
    InvalidReference(String),
    /// An image could not be pulled from its registry: the registry is unreachable, refused
    /// the request (401, 404, ... with its message) or sent something unusable.
    #[error("failed to pull {reference} from {registry}: {reason}")]
    Pull {
        /// The normalised reference.
        reference: String,
        /// The registry host (and port) the requests went to.
        registry: String,
        /// What went wrong, with the registry's message when it sent one.
        reason: String,
    },
    /// No image of this (normalised) reference is in the store.
    #[error("image {0} not found")]
    NotFound(String),
    /// The store's index cannot be decoded.
    #[error("image store index {path} is corrupt")]
    CorruptIndex {
        /// The index file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// An image is in the index but part of it is gone from the store.
    #[error("image {reference} is incomplete: {missing} is missing; import it again")]
    Incomplete {
        /// The image.
        reference: String,
        /// What is missing.
        missing: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError + use<> {
    let path = path.to_path_buf();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

/// One image of the store, as `windlass image ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// The normalised reference, e.g. `windlass.local/busybox:latest`.
    pub reference: String,
    /// The image ID, `sha256:<config digest>` (what CRI and `crictl images` report).
    pub id: String,
    /// Bytes of the image's blobs as stored: config and layers (compressed, if they were).
    pub size: u64,
}

/// The process defaults of an image (the `config` object of the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`, if set and not empty.
    pub working_dir: Option<String>,
    /// `User` (`uid`, `uid:gid`, `name` or `name:group`), if set and not empty.
    pub user: Option<String>,
    /// `StopSignal` (e.g. `SIGTERM`), if set and not empty.
    pub stop_signal: Option<String>,
}

/// An image resolved for running a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The normalised reference it was found under.
    pub reference: String,
    /// The image ID, `sha256:<config digest>`.
    pub id: String,
    /// `sha256:<manifest digest>` (the repo digest CRI reports as `name@digest`).
    pub manifest_digest: String,
    /// The unpacked layers, lowest first (overlayfs wants `lowerdir` highest first: reverse them).
    pub layers: Vec<PathBuf>,
    /// The process defaults.
    pub config: ImageConfig,
}

/// The image store under `<data-dir>/images/`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    /// Registries (`host` or `host:port`) that may be pulled from over plain HTTP, besides
    /// `localhost` and loopback addresses.
    insecure_registries: Vec<String>,
}

// ---- OCI documents (only the fields the store reads) ----

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    media_type: String,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    config: Option<ProcessDoc>,
    rootfs: RootFsDoc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessDoc {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFsDoc {
    #[serde(default)]
    diff_ids: Vec<String>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

impl ImageStore {
    /// Opens (creating if needed) the store under `<data_dir>/images/`.
    pub fn open(data_dir: &Path) -> Result<Self, ImageError> {
        let root = data_dir.join("images");
        for dir in [
            root.join("blobs").join("sha256"),
            root.join("layers"),
            root.join("tmp"),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(ImageStore {
            root,
            insecure_registries: insecure_registries_from_env(),
        })
    }

    /// Adds registries (`host` or `host:port`) that [`ImageStore::pull`] may reach over plain
    /// HTTP (after HTTPS, with any certificate, fails), like Docker's `--insecure-registry`.
    /// `localhost` and loopback addresses always may; so may those in [`INSECURE_REGISTRIES_ENV`].
    pub fn with_insecure_registries(
        mut self,
        registries: impl IntoIterator<Item = String>,
    ) -> Self {
        self.insecure_registries.extend(registries);
        self
    }

    /// The store's directory, `<data_dir>/images`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports every named image of the OCI archive at `archive`: verifies each blob against its
    /// digest, stores the blobs, unpacks layers not unpacked yet and records the references
    /// (replacing what they named before). Importing the same archive again changes nothing.
    /// Returns the images imported. On an error the store is left as it was, apart from verified
    /// blobs and whole layers that a later import reuses.
    pub fn import(&self, archive: &Path) -> Result<Vec<ImageSummary>, ImageError> {
        let _lock = self.lock()?;
        self.clean_tmp()?;
        let staging = Staging::create(self.root.join("tmp").join(format!(
            "import-{}-{}",
            std::process::id(),
            unique_suffix()
        )))?;
        let layout = stage_archive(archive, &staging.path)?;

        let not_layout = |reason: String| ImageError::NotOciLayout {
            archive: archive.to_path_buf(),
            reason,
        };
        if let Some(version) = &layout.oci_layout {
            let parsed: serde_json::Value =
                serde_json::from_slice(version).map_err(|source| ImageError::InvalidJson {
                    what: "oci-layout",
                    digest: "oci-layout".into(),
                    source,
                })?;
            if parsed["imageLayoutVersion"].as_str().is_none() {
                return Err(not_layout("oci-layout has no imageLayoutVersion".into()));
            }
        }
        let index_bytes = layout
            .index
            .ok_or_else(|| not_layout("it has no index.json".into()))?;
        let index: IndexDoc =
            serde_json::from_slice(&index_bytes).map_err(|source| ImageError::InvalidJson {
                what: "index",
                digest: "index.json".into(),
                source,
            })?;

        let blobs = Blobs {
            staged: &staging.path,
            store: &self.root.join("blobs").join("sha256"),
        };
        let mut imported = Vec::new();
        for descriptor in &index.manifests {
            let Some(reference) = archive_reference(&descriptor.annotations)? else {
                tracing::warn!(
                    archive = %archive.display(),
                    digest = %descriptor.digest,
                    "skipping a manifest with no image name annotation"
                );
                continue;
            };
            let (manifest_digest, summary) =
                self.commit_image(&blobs, descriptor, &staging.path)?;
            imported.push((reference, manifest_digest, summary));
        }
        if imported.is_empty() {
            return Err(not_layout(format!(
                "no manifest of index.json is named by a {REF_NAME_ANNOTATION} annotation"
            )));
        }

        self.record(imported)
    }

    /// The shared tail of [`ImageStore::import`] and [`ImageStore::pull`]: follows `descriptor`
    /// (a manifest, or an index whose entry for this platform is taken) through blobs that are
    /// staged or already stored, checks the config against the manifest, moves the blobs into the
    /// store and unpacks layers not unpacked yet. Returns the manifest digest and the summary
    /// (without its reference). Called with the lock held.
    fn commit_image(
        &self,
        blobs: &Blobs<'_>,
        descriptor: &Descriptor,
        staging: &Path,
    ) -> Result<(String, ImageSummary), ImageError> {
        let (manifest_desc, manifest) = blobs.pick_manifest(descriptor, 0)?;
        let config = blobs.read_config(&manifest.config)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::LayerCount {
                config: manifest.config.digest.clone(),
                diff_ids: config.rootfs.diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
        // Blobs go into the store first, then layers unpack from there.
        for blob in std::iter::once(descriptor)
            .chain([&manifest_desc, &manifest.config])
            .chain(&manifest.layers)
        {
            blobs.commit(blob)?;
        }
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            self.ensure_layer(&blobs.existing(layer)?, layer, diff_id, staging)?;
        }
        Ok((
            manifest_desc.digest.clone(),
            ImageSummary {
                reference: String::new(),
                id: manifest.config.digest.clone(),
                size: image_size(&manifest),
            },
        ))
    }

    /// Records `(reference, manifest digest, summary)` in the index, replacing what each
    /// reference named before (the last step of an import or a pull, with the lock held).
    fn record(
        &self,
        imported: Vec<(String, String, ImageSummary)>,
    ) -> Result<Vec<ImageSummary>, ImageError> {
        let mut references = self.read_index()?;
        let summaries = imported
            .into_iter()
            .map(|(reference, manifest_digest, summary)| {
                references.insert(reference.clone(), manifest_digest);
                ImageSummary {
                    reference,
                    ..summary
                }
            })
            .collect();
        self.write_index(&references)?;
        Ok(summaries)
    }

    /// The image `reference` names (normalised first; `name@sha256:...` matches a manifest
    /// digest, and an image ID `sha256:<config digest>` matches too). An image not in the store
    /// is [`ImageError::NotFound`].
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let references = self.read_index()?;
        let blobs = self.store_blobs();
        if let Some(id) = as_image_id(reference) {
            for (name, manifest_digest) in &references {
                let manifest = blobs.read_manifest_by_digest(manifest_digest)?;
                if manifest.config.digest == id {
                    return self.image(name, manifest_digest, &manifest);
                }
            }
            return Err(ImageError::NotFound(reference.to_string()));
        }
        let normalised = normalize_reference(reference)?;
        let found = match normalised.split_once('@') {
            None => references.get_key_value(&normalised),
            // A pull by digest is recorded under the reference as given (its digest may be an
            // index's); else any tag of the repository whose manifest has this digest.
            Some((name, digest)) => references.get_key_value(&normalised).or_else(|| {
                let repository = repository_of(name);
                references
                    .iter()
                    .find(|(r, d)| *d == digest && repository_of(r) == repository)
            }),
        };
        let (name, manifest_digest) = found.ok_or(ImageError::NotFound(normalised.clone()))?;
        let manifest = blobs.read_manifest_by_digest(manifest_digest)?;
        self.image(name, manifest_digest, &manifest)
    }

    /// Every image in the store, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let blobs = self.store_blobs();
        self.read_index()?
            .into_iter()
            .map(|(reference, manifest_digest)| {
                let manifest = blobs.read_manifest_by_digest(&manifest_digest)?;
                Ok(ImageSummary {
                    reference,
                    id: manifest.config.digest.clone(),
                    size: image_size(&manifest),
                })
            })
            .collect()
    }

    fn image(
        &self,
        reference: &str,
        manifest_digest: &str,
        manifest: &ManifestDoc,
    ) -> Result<Image, ImageError> {
        let blobs = self.store_blobs();
        let config = blobs.read_config(&manifest.config)?;
        let mut layers = Vec::with_capacity(config.rootfs.diff_ids.len());
        for diff_id in &config.rootfs.diff_ids {
            let dir = self.root.join("layers").join(digest_hex(diff_id)?);
            if !dir.is_dir() {
                return Err(ImageError::Incomplete {
                    reference: reference.to_string(),
                    missing: format!("layer {diff_id}"),
                });
            }
            layers.push(dir);
        }
        let process = config.config.unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(Image {
            reference: reference.to_string(),
            id: manifest.config.digest.clone(),
            manifest_digest: manifest_digest.to_string(),
            layers,
            config: ImageConfig {
                entrypoint: process.entrypoint.unwrap_or_default(),
                cmd: process.cmd.unwrap_or_default(),
                env: process.env.unwrap_or_default(),
                working_dir: non_empty(process.working_dir),
                user: non_empty(process.user),
                stop_signal: non_empty(process.stop_signal),
            },
        })
    }

    fn store_blobs(&self) -> StoreBlobs {
        StoreBlobs {
            dir: self.root.join("blobs").join("sha256"),
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, ImageError> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err("lock", &path)(io::Error::from(errno)))
    }

    /// Removes what earlier imports left in `tmp/` (called with the lock held, so no import is
    /// using it).
    fn clean_tmp(&self) -> Result<(), ImageError> {
        let tmp = self.root.join("tmp");
        let entries = fs::read_dir(&tmp).map_err(io_err("read", &tmp))?;
        for entry in entries {
            let path = entry.map_err(io_err("read", &tmp))?.path();
            remove_any(&path).map_err(io_err("remove", &path))?;
        }
        Ok(())
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn read_index(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| ImageError::CorruptIndex { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn write_index(&self, references: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let path = self.index_path();
        let tmp = self.root.join("index.json.tmp");
        let mut bytes =
            serde_json::to_vec_pretty(references).map_err(|source| ImageError::CorruptIndex {
                path: path.clone(),
                source,
            })?;
        bytes.push(b'\n');
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))
    }

    /// Unpacks `layer` (the blob at `blob`) into `layers/<diff ID hex>/` unless it is there.
    fn ensure_layer(
        &self,
        blob: &Path,
        layer: &Descriptor,
        diff_id: &str,
        staging: &Path,
    ) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(diff_id)?;
        let dest = self.root.join("layers").join(hex);
        if dest.is_dir() {
            return Ok(dest);
        }
        let compression = layer_compression(&layer.media_type).ok_or_else(|| {
            ImageError::UnsupportedMediaType {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
            }
        })?;
        let unpack_err = |source| ImageError::Unpack {
            digest: layer.digest.clone(),
            source,
        };
        let tmp = staging.join(format!("layer-{hex}"));
        if tmp.exists() {
            remove_any(&tmp).map_err(io_err("remove", &tmp))?;
        }
        fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
        let file = File::open(blob).map_err(io_err("open", blob))?;
        let reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(BufReader::new(file)),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        };
        let mut hashing = HashingReader::new(reader);
        unpack_layer(&mut hashing, &tmp).map_err(unpack_err)?;
        // The tar reader may stop before the end-of-archive padding; the diff ID covers it all.
        io::copy(&mut hashing, &mut io::sink()).map_err(unpack_err)?;
        let actual = hashing.digest();
        if actual != diff_id {
            return Err(ImageError::DiffIdMismatch {
                digest: layer.digest.clone(),
                expected: diff_id.to_string(),
                actual,
            });
        }
        // The layer's root directory gets the usual mode whatever the umask.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &tmp))?;
        fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
        Ok(dest)
    }
}

// ---- Pulling from a registry (the OCI distribution API) ----

/// The environment variable that lists registries (`host` or `host:port`, comma-separated) that
/// `windlass image pull` and the agent may reach over plain HTTP, like Docker's
/// `--insecure-registry`. `localhost` and loopback addresses never need listing.
pub const INSECURE_REGISTRIES_ENV: &str = "WINDLASS_INSECURE_REGISTRIES";

/// What a manifest request accepts: image indexes and manifests, OCI and Docker v2 schema 2.
const MANIFEST_ACCEPT: [&str; 4] = [
    INDEX_TYPES[0],
    INDEX_TYPES[1],
    MANIFEST_TYPES[0],
    MANIFEST_TYPES[1],
];

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a registry may stay silent in the middle of a response.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn insecure_registries_from_env() -> Vec<String> {
    std::env::var(INSECURE_REGISTRIES_ENV)
        .map(|value| {
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Credentials for a registry that wants them: sent as HTTP Basic, or traded for a bearer token
/// when the registry answers with a `WWW-Authenticate: Bearer realm=...` challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where an image reference points in the distribution API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryReference {
    /// The normalised reference, the name the store records: `docker.io/library/busybox:latest`.
    pub normalised: String,
    /// The registry as the reference names it: `docker.io`, `localhost:5000`, `127.0.0.1:5000`.
    pub registry: String,
    /// The host (and port) requests go to: `registry-1.docker.io` for `docker.io`, else the
    /// registry.
    pub endpoint: String,
    /// The repository in the registry: `library/busybox`.
    pub repository: String,
    /// The tag (`latest` when the reference gives neither a tag nor a digest).
    pub tag: Option<String>,
    /// The manifest digest, when the reference pins one (then it is what is fetched).
    pub digest: Option<String>,
}

impl RegistryReference {
    /// Parses (and normalises) an image reference.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let normalised = normalize_reference(reference)?;
        let (name, digest) = match normalised.split_once('@') {
            Some((name, digest)) => (name, Some(digest.to_string())),
            None => (normalised.as_str(), None),
        };
        let full = repository_of(name);
        let tag = name.get(full.len() + 1..).map(String::from);
        let (registry, repository) = full
            .split_once('/')
            .ok_or_else(|| ImageError::InvalidReference(reference.to_string()))?;
        let endpoint = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        Ok(RegistryReference {
            registry: registry.to_string(),
            endpoint: endpoint.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
            normalised,
        })
    }

    /// Whether plain HTTP may be tried after HTTPS fails: for `localhost`, loopback addresses
    /// and the registries listed as insecure (by `host:port` or by `host`).
    pub fn allows_http(&self, insecure_registries: &[String]) -> bool {
        let host = host_of(&self.registry);
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || insecure_registries
                .iter()
                .any(|r| *r == self.registry || r == host)
    }

    fn oci_reference(&self) -> oci_client::Reference {
        let (registry, repository) = (self.endpoint.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                tag.clone(),
                digest.clone(),
            ),
            (None, Some(digest)) => {
                oci_client::Reference::with_digest(registry, repository, digest.clone())
            }
            (tag, None) => oci_client::Reference::with_tag(
                registry,
                repository,
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

/// The host of `host`, `host:port` or `[v6]:port`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    registry.split_once(':').map_or(registry, |(host, _)| host)
}

/// What a manifest document is, from its `mediaType` (or, when it has none, its shape).
/// Schema 1 manifests and other media types are refused.
fn manifest_media_type(body: &[u8], digest: &str) -> Result<String, ImageError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        #[serde(default)]
        schema_version: Option<u64>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
    }
    let doc: Versioned =
        serde_json::from_slice(body).map_err(|source| ImageError::InvalidJson {
            what: "manifest",
            digest: digest.to_string(),
            source,
        })?;
    let unsupported = |media_type: String| ImageError::UnsupportedMediaType {
        media_type,
        digest: digest.to_string(),
    };
    if doc.schema_version != Some(2) {
        return Err(unsupported(format!(
            "manifest schema version {}",
            doc.schema_version
                .map_or_else(|| "(none)".to_string(), |v| v.to_string())
        )));
    }
    match doc.media_type {
        Some(media_type) if MANIFEST_ACCEPT.contains(&media_type.as_str()) => Ok(media_type),
        Some(other) => Err(unsupported(other)),
        // The OCI spec makes `mediaType` optional: an index has `manifests`, a manifest `config`.
        None if doc.manifests.is_some() => Ok(INDEX_TYPES[0].to_string()),
        None if doc.config.is_some() => Ok(MANIFEST_TYPES[0].to_string()),
        None => Err(unsupported("(none)".into())),
    }
}

/// `sha256:<hex>` of `bytes`.
fn sha256_digest(bytes: &[u8]) -> String {
    let hash = ring::digest::digest(&SHA256, bytes);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Says what went wrong talking to a registry, with the registry's own message when it sent one.
fn describe_registry_error(error: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    let chain = |error: &dyn std::error::Error| {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    };
    match error {
        E::RequestError(e) if e.is_connect() || e.is_timeout() => {
            format!("the registry is unreachable: {}", chain(e))
        }
        E::RequestError(e) => format!("request failed: {}", chain(e)),
        E::RegistryError { envelope, url } => {
            let messages: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| {
                    let code = serde_json::to_value(&e.code)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_else(|| format!("{:?}", e.code));
                    format!("{code}: {}", e.message)
                })
                .collect();
            format!("{} ({url})", messages.join("; "))
        }
        E::UnauthorizedError { url } => format!(
            "unauthorized (HTTP 401) at {url}: the registry refused these credentials (or an \
             anonymous pull)"
        ),
        E::AuthenticationFailure(reason) => {
            format!("the registry's token service refused: {}", reason.trim())
        }
        E::ServerError { code, url, message } => {
            format!("HTTP {code} at {url}: {}", message.trim())
        }
        other => chain(other),
    }
}

/// A client for one registry, over HTTPS or (for a registry that allows it) plain HTTP.
struct Registry<'a> {
    target: &'a RegistryReference,
    reference: oci_client::Reference,
    auth: oci_client::secrets::RegistryAuth,
    client: oci_client::Client,
}

impl<'a> Registry<'a> {
    fn new(
        target: &'a RegistryReference,
        auth: oci_client::secrets::RegistryAuth,
        plain_http: bool,
        allows_http: bool,
    ) -> Result<Self, ImageError> {
        // reqwest takes the process's rustls provider; ours is ring (no aws-lc, no openssl).
        // An error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = oci_client::client::ClientConfig {
            protocol: if plain_http {
                oci_client::client::ClientProtocol::HttpsExcept(vec![target.endpoint.clone()])
            } else {
                oci_client::client::ClientProtocol::Https
            },
            // An insecure registry is tried over HTTPS first whatever its certificate, as Docker
            // and containerd do.
            accept_invalid_certificates: allows_http,
            // Indexes are resolved here (`choose_platform`), as for imports.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("windlass/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| {
            pull_error(
                target,
                format!(
                    "cannot build the HTTP client: {}",
                    describe_registry_error(&e)
                ),
            )
        })?;
        Ok(Registry {
            target,
            reference: target.oci_reference(),
            auth,
            client,
        })
    }

    /// The manifest (or index) the reference names, or `digest` when given.
    async fn manifest(
        &self,
        digest: Option<&str>,
    ) -> Result<Vec<u8>, oci_client::errors::OciDistributionError> {
        let reference = match digest {
            Some(digest) => self.reference.clone_with_digest(digest.to_string()),
            None => self.reference.clone(),
        };
        let (body, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, &MANIFEST_ACCEPT)
            .await?;
        Ok(body.to_vec())
    }

    /// Streams the blob of `descriptor` into `dest`, hashing as it goes; a blob whose size or
    /// digest differs from the descriptor's is refused (and `dest` removed).
    async fn fetch_blob(&self, descriptor: &Descriptor, dest: &Path) -> Result<(), ImageError> {
        let result = self.fetch_blob_into(descriptor, dest).await;
        if result.is_err() {
            let _ = fs::remove_file(dest);
        }
        result
    }

    async fn fetch_blob_into(
        &self,
        descriptor: &Descriptor,
        dest: &Path,
    ) -> Result<(), ImageError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;

        let layer = oci_client::manifest::OciDescriptor {
            media_type: descriptor.media_type.clone(),
            digest: descriptor.digest.clone(),
            size: i64::try_from(descriptor.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, &layer)
            .await
            .map_err(|e| self.error(&e))?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(io_err("create", dest))?;
        let mut context = Context::new(&SHA256);
        let mut received = 0u64;
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // oci-client checks the digest too and reports a mismatch as an error at the
                // end; our own check below says which digests differ.
                Err(e) if received == descriptor.size => {
                    failure = Some(e);
                    break;
                }
                Err(e) => {
                    return Err(pull_error(
                        self.target,
                        format!("failed to download blob {}: {e}", descriptor.digest),
                    ));
                }
            };
            received += chunk.len() as u64;
            if received > descriptor.size {
                return Err(ImageError::SizeMismatch {
                    digest: descriptor.digest.clone(),
                    expected: descriptor.size,
                    actual: received,
                });
            }
            context.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io_err("write", dest))?;
        }
        file.sync_all().await.map_err(io_err("write", dest))?;
        if received != descriptor.size {
            return Err(ImageError::SizeMismatch {
                digest: descriptor.digest.clone(),
                expected: descriptor.size,
                actual: received,
            });
        }
        let hex: String = context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let actual = format!("sha256:{hex}");
        if actual != descriptor.digest {
            return Err(ImageError::DigestMismatch {
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        if let Some(e) = failure {
            return Err(pull_error(
                self.target,
                format!("failed to download blob {}: {e}", descriptor.digest),
            ));
        }
        Ok(())
    }

    fn error(&self, error: &oci_client::errors::OciDistributionError) -> ImageError {
        pull_error(self.target, describe_registry_error(error))
    }
}

fn pull_error(target: &RegistryReference, reason: String) -> ImageError {
    ImageError::Pull {
        reference: target.normalised.clone(),
        registry: target.endpoint.clone(),
        reason,
    }
}

impl ImageStore {
    /// Pulls `reference` from its registry (`docker.io` is `registry-1.docker.io`) into the
    /// store and records it in the index as [`ImageStore::import`] does. Manifests, the config
    /// and layers are fetched over HTTPS (plain HTTP is tried after that fails only for
    /// `localhost`, loopback addresses and insecure registries, see [`INSECURE_REGISTRIES_ENV`]);
    /// an image index is resolved to linux/<this arch>. Without `auth` the pull is anonymous (a
    /// registry's bearer-token challenge is answered with an anonymous token). Every blob is
    /// streamed to disk and checked against its digest and size; blobs and layers already in
    /// the store are not fetched or unpacked again. On an error the store is left as it was,
    /// apart from verified blobs and whole layers that a later pull reuses.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&RegistryCredentials>,
    ) -> Result<ImageSummary, ImageError> {
        let target = RegistryReference::parse(reference)?;
        let auth = match auth {
            Some(c) => {
                oci_client::secrets::RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let allows_http = target.allows_http(&self.insecure_registries);

        // One pull or import at a time (kubelet's serialised pulls), and nothing else touches
        // `tmp/` meanwhile.
        let lock = {
            let store = self.clone();
            tokio::task::spawn_blocking(move || store.lock())
                .await
                .map_err(|e| io_err("lock", &self.root.join("lock"))(io::Error::other(e)))??
        };
        self.clean_tmp()?;
        let staging = Staging::create(self.root.join("tmp").join(format!(
            "pull-{}-{}",
            std::process::id(),
            unique_suffix()
        )))?;
        let staged_blobs = staging.path.join("blobs");
        let store_blobs = self.root.join("blobs").join("sha256");

        let mut registry = Registry::new(&target, auth.clone(), false, allows_http)?;
        let body = match registry.manifest(target.digest.as_deref()).await {
            Ok(body) => body,
            Err(oci_client::errors::OciDistributionError::RequestError(e)) if allows_http => {
                tracing::debug!(registry = %target.endpoint, error = %e, "HTTPS failed; trying plain HTTP");
                registry = Registry::new(&target, auth, true, allows_http)?;
                registry
                    .manifest(target.digest.as_deref())
                    .await
                    .map_err(|e| registry.error(&e))?
            }
            Err(e) => return Err(registry.error(&e)),
        };
        let top = stage_manifest(&body, &staged_blobs, target.digest.as_deref(), None)?;

        // Follow indexes down to this platform's manifest, as `Blobs::pick_manifest` will.
        let blobs = Blobs {
            staged: &staging.path,
            store: &store_blobs,
        };
        let mut descriptor = top.clone();
        let mut depth = 0;
        while INDEX_TYPES.contains(&descriptor.media_type.as_str()) {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(ImageError::UnsupportedMediaType {
                    media_type: descriptor.media_type.clone(),
                    digest: descriptor.digest.clone(),
                });
            }
            let index: IndexDoc = blobs.read_json(&descriptor, "image index")?;
            let chosen = choose_platform(&index.manifests).cloned().ok_or_else(|| {
                pull_error(
                    &target,
                    format!(
                        "the image index {} has no linux/{} image",
                        descriptor.digest,
                        go_arch()
                    ),
                )
            })?;
            if blobs.existing(&chosen).is_err() {
                let body = registry
                    .manifest(Some(&chosen.digest))
                    .await
                    .map_err(|e| registry.error(&e))?;
                stage_manifest(
                    &body,
                    &staged_blobs,
                    Some(&chosen.digest),
                    Some(chosen.size),
                )?;
            }
            descriptor = chosen;
        }
        let manifest: ManifestDoc = blobs.read_json(&descriptor, "manifest")?;
        let (mut fetched, mut reused) = (0usize, 0usize);
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            digest_hex(&blob.digest)?;
            if !std::ptr::eq(blob, &manifest.config)
                && layer_compression(&blob.media_type).is_none()
            {
                return Err(ImageError::UnsupportedMediaType {
                    media_type: blob.media_type.clone(),
                    digest: blob.digest.clone(),
                });
            }
            match blobs.existing(blob) {
                Ok(_) => reused += 1,
                Err(ImageError::MissingBlob(_)) => {
                    let dest = staged_blobs.join(digest_hex(&blob.digest)?);
                    registry.fetch_blob(blob, &dest).await?;
                    fetched += 1;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(
            reference = %target.normalised,
            fetched,
            reused,
            "blobs of the image pulled"
        );

        // The same path as an import from here: commit the blobs, unpack, record.
        let store = self.clone();
        let staging_path = staging.path.clone();
        let normalised = target.normalised.clone();
        let summary = tokio::task::spawn_blocking(move || {
            let blobs = Blobs {
                staged: &staging_path,
                store: &store_blobs,
            };
            let (manifest_digest, summary) = store.commit_image(&blobs, &top, &staging_path)?;
            store.record(vec![(normalised, manifest_digest, summary)])
        })
        .await
        .map_err(|e| io_err("unpack", &staging.path)(io::Error::other(e)))??;
        drop(staging);
        drop(lock);
        summary
            .into_iter()
            .next()
            .ok_or_else(|| ImageError::NotFound(target.normalised.clone()))
    }
}

/// Checks a fetched manifest (or index) against the digest (and size) it was asked by, when it
/// was, and stages it as a blob. Returns its descriptor.
fn stage_manifest(
    body: &[u8],
    staged_blobs: &Path,
    expected_digest: Option<&str>,
    expected_size: Option<u64>,
) -> Result<Descriptor, ImageError> {
    let digest = sha256_digest(body);
    if let Some(expected) = expected_digest {
        digest_hex(expected)?;
        if expected != digest {
            return Err(ImageError::DigestMismatch {
                expected: expected.to_string(),
                actual: digest,
            });
        }
    }
    let size = body.len() as u64;
    if let Some(expected) = expected_size.filter(|expected| *expected != size) {
        return Err(ImageError::SizeMismatch {
            digest,
            expected,
            actual: size,
        });
    }
    if size > MAX_JSON_BYTES {
        return Err(ImageError::SizeMismatch {
            digest,
            expected: MAX_JSON_BYTES,
            actual: size,
        });
    }
    let media_type = manifest_media_type(body, &digest)?;
    let dest = staged_blobs.join(digest_hex(&digest)?);
    fs::write(&dest, body).map_err(io_err("write", &dest))?;
    Ok(Descriptor {
        media_type,
        digest,
        size,
        annotations: BTreeMap::new(),
        platform: None,
    })
}

/// Formats images as `windlass image ls` prints them, like `crictl images`: reference, the first
/// 13 hex digits of the ID, and a human-readable size.
pub fn format_table(images: &[ImageSummary]) -> String {
    let rows: Vec<[String; 3]> = images
        .iter()
        .map(|image| {
            let id = image.id.trim_start_matches("sha256:");
            [
                image.reference.clone(),
                id.get(..13).unwrap_or(id).to_string(),
                human_size(image.size),
            ]
        })
        .collect();
    let header = ["IMAGE".to_string(), "ID".into(), "SIZE".into()];
    let widths: Vec<usize> = (0..3)
        .map(|column| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|row| row[column].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}   {:<w1$}   {}",
            row[0],
            row[1],
            row[2],
            w0 = widths[0],
            w1 = widths[1]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Sizes as Docker and crictl print them: decimal units, four significant digits (`4.26MB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit + 1 < UNITS.len() {
        size /= 1000.0;
        unit += 1;
    }
    // Go's `%.4g`: four significant digits, trailing zeros dropped.
    let decimals = if size >= 100.0 {
        1
    } else if size >= 10.0 {
        2
    } else {
        3
    };
    let text = format!("{size:.decimals$}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{}", UNITS[unit])
}

/// Normalises an image reference as Kubernetes (and containerd) do: a missing registry is
/// `docker.io`, a one-component Docker Hub name gets `library/`, a missing tag is `latest`
/// unless a digest is given. `busybox` → `docker.io/library/busybox:latest`,
/// `windlass.local/busybox` → `windlass.local/busybox:latest`.
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    let invalid = || ImageError::InvalidReference(reference.to_string());
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => {
            digest_hex(digest).map_err(|_| invalid())?;
            (rest, Some(digest))
        }
        None => (reference, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, remainder))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, remainder.to_string())
        }
        _ => ("docker.io", name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    let path_ok = path.split('/').all(|component| {
        !component.is_empty()
            && component
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && component.as_bytes()[0].is_ascii_alphanumeric()
    });
    let tag_ok = tag.is_none_or(|tag| {
        !tag.is_empty()
            && tag.len() <= 128
            && tag.as_bytes()[0] != b'.'
            && tag.as_bytes()[0] != b'-'
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    if !(domain_ok && path_ok && tag_ok) {
        return Err(invalid());
    }
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(tag), _) => {
            out.push(':');
            out.push_str(tag);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    Ok(out)
}

/// `name` of a normalised `name[:tag][@digest]`.
fn repository_of(reference: &str) -> &str {
    let reference = reference
        .split_once('@')
        .map_or(reference, |(name, _)| name);
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => &reference[..last_slash + i],
        None => reference,
    }
}

/// `sha256:<64 hex>` or 64 bare hex digits: an image ID rather than a name.
fn as_image_id(reference: &str) -> Option<String> {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| format!("sha256:{hex}"))
}

/// The reference a manifest of an archive's `index.json` names, normalised; `None` when it is
/// not named.
fn archive_reference(annotations: &BTreeMap<String, String>) -> Result<Option<String>, ImageError> {
    let ref_name = annotations.get(REF_NAME_ANNOTATION).map(String::as_str);
    let image_name = annotations
        .get(CONTAINERD_NAME_ANNOTATION)
        .map(String::as_str);
    let full = match (ref_name, image_name) {
        // A full reference.
        (Some(r), _) if r.contains('/') || r.contains(':') || r.contains('@') => r.to_string(),
        // Only a tag: containerd's exports carry the full name beside it.
        (Some(tag), Some(name)) => {
            let last_slash = name.rfind('/').map_or(0, |i| i + 1);
            if name[last_slash..].contains(':') || name.contains('@') {
                name.to_string()
            } else {
                format!("{name}:{tag}")
            }
        }
        (None, Some(name)) => name.to_string(),
        // A bare tag with nothing to qualify it names nothing we can look up.
        (Some(_), None) | (None, None) => return Ok(None),
    };
    normalize_reference(&full).map(Some)
}

/// The hex part of a `sha256:<64 lowercase hex>` digest.
fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .ok_or_else(|| ImageError::InvalidDigest(digest.to_string()))
}

fn image_size(manifest: &ManifestDoc) -> u64 {
    manifest
        .layers
        .iter()
        .fold(manifest.config.size, |total, layer| {
            total.saturating_add(layer.size)
        })
}

enum Compression {
    None,
    Gzip,
}

fn layer_compression(media_type: &str) -> Option<Compression> {
    if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        Some(Compression::Gzip)
    } else if media_type.ends_with(".tar") || media_type.ends_with(".v1.tar") {
        Some(Compression::None)
    } else {
        None
    }
}

/// A per-import directory under `tmp/`, removed when the import ends (or fails).
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(path: PathBuf) -> Result<Self, ImageError> {
        fs::create_dir_all(path.join("blobs")).map_err(io_err("create", &path))?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_any(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove import staging dir");
        }
    }
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What an archive held besides blobs (which are staged as files).
struct StagedLayout {
    index: Option<Vec<u8>>,
    oci_layout: Option<Vec<u8>>,
}

/// Reads the archive once: `index.json` and `oci-layout` into memory, each blob into
/// `<staging>/blobs/<hex>` after checking it hashes to its name.
fn stage_archive(archive: &Path, staging: &Path) -> Result<StagedLayout, ImageError> {
    let archive_err = |source| ImageError::Archive {
        archive: archive.to_path_buf(),
        source,
    };
    let file = File::open(archive).map_err(io_err("open", archive))?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    let mut layout = StagedLayout {
        index: None,
        oci_layout: None,
    };
    let mut entries_seen = 0usize;
    for entry in tar.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        entries_seen += 1;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(archive_err)?.into_owned();
        let Some(path) = clean_relative(&path) else {
            continue;
        };
        let Some(path) = path.to_str() else {
            continue;
        };
        match path {
            "index.json" | "oci-layout" => {
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(MAX_JSON_BYTES)
                    .read_to_end(&mut bytes)
                    .map_err(archive_err)?;
                if path == "index.json" {
                    layout.index = Some(bytes);
                } else {
                    layout.oci_layout = Some(bytes);
                }
            }
            _ => {
                let Some(hex) = path.strip_prefix("blobs/sha256/") else {
                    continue;
                };
                let expected = format!("sha256:{hex}");
                digest_hex(&expected)?;
                let dest = staging.join("blobs").join(hex);
                let mut out = File::create(&dest).map_err(io_err("create", &dest))?;
                let expected_len = entry.size();
                let mut hashing = HashingReader::new(&mut entry);
                let copied = io::copy(&mut hashing, &mut out).map_err(archive_err)?;
                if copied != expected_len {
                    return Err(ImageError::Truncated {
                        archive: archive.to_path_buf(),
                        entry: path.to_string(),
                        expected: expected_len,
                        actual: copied,
                    });
                }
                out.sync_all().map_err(io_err("write", &dest))?;
                let actual = hashing.digest();
                if actual != expected {
                    return Err(ImageError::DigestMismatch { expected, actual });
                }
            }
        }
    }
    if entries_seen == 0 {
        return Err(ImageError::NotOciLayout {
            archive: archive.to_path_buf(),
            reason: "it is empty".into(),
        });
    }
    Ok(layout)
}

/// Blobs of an import: the staged ones first, then those already in the store.
struct Blobs<'a> {
    staged: &'a Path,
    store: &'a Path,
}

impl Blobs<'_> {
    /// The path of a blob with the descriptor's digest and size.
    fn existing(&self, descriptor: &Descriptor) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(&descriptor.digest)?;
        for path in [self.staged.join("blobs").join(hex), self.store.join(hex)] {
            match fs::metadata(&path) {
                Ok(meta) => {
                    if meta.len() != descriptor.size {
                        return Err(ImageError::SizeMismatch {
                            digest: descriptor.digest.clone(),
                            expected: descriptor.size,
                            actual: meta.len(),
                        });
                    }
                    return Ok(path);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("stat", &path)(e)),
            }
        }
        Err(ImageError::MissingBlob(descriptor.digest.clone()))
    }

    /// Moves a staged blob into the store (a blob already there is kept).
    fn commit(&self, descriptor: &Descriptor) -> Result<(), ImageError> {
        let path = self.existing(descriptor)?;
        let dest = self.store.join(digest_hex(&descriptor.digest)?);
        if path != dest && !dest.exists() {
            fs::rename(&path, &dest).map_err(io_err("rename into place", &dest))?;
        }
        Ok(())
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        descriptor: &Descriptor,
        what: &'static str,
    ) -> Result<T, ImageError> {
        let path = self.existing(descriptor)?;
        read_json_file(&path, &descriptor.digest, what)
    }

    fn read_config(&self, descriptor: &Descriptor) -> Result<ConfigDoc, ImageError> {
        self.read_json(descriptor, "image config")
    }

    /// Follows `descriptor` (a manifest, or an index whose entry for this platform is taken) to
    /// an image manifest.
    fn pick_manifest(
        &self,
        descriptor: &Descriptor,
        depth: usize,
    ) -> Result<(Descriptor, ManifestDoc), ImageError> {
        let unsupported = || ImageError::UnsupportedMediaType {
            media_type: descriptor.media_type.clone(),
            digest: descriptor.digest.clone(),
        };
        if INDEX_TYPES.contains(&descriptor.media_type.as_str()) {
            if depth >= MAX_INDEX_DEPTH {
                return Err(unsupported());
            }
            let index: IndexDoc = self.read_json(descriptor, "image index")?;
            let chosen = choose_platform(&index.manifests).ok_or_else(unsupported)?;
            return self.pick_manifest(chosen, depth + 1);
        }
        if !descriptor.media_type.is_empty()
            && !MANIFEST_TYPES.contains(&descriptor.media_type.as_str())
        {
            return Err(unsupported());
        }
        let manifest: ManifestDoc = self.read_json(descriptor, "manifest")?;
        if !manifest.media_type.is_empty() && INDEX_TYPES.contains(&manifest.media_type.as_str()) {
            return Err(unsupported());
        }
        Ok((descriptor.clone(), manifest))
    }
}

/// Blobs already in the store (for `resolve` and `list`).
struct StoreBlobs {
    dir: PathBuf,
}

impl StoreBlobs {
    fn read_manifest_by_digest(&self, digest: &str) -> Result<ManifestDoc, ImageError> {
        let path = self.dir.join(digest_hex(digest)?);
        read_json_file(&path, digest, "manifest")
    }

    fn read_config(&self, descriptor: &Descriptor) -> Result<ConfigDoc, ImageError> {
        let path = self.dir.join(digest_hex(&descriptor.digest)?);
        read_json_file(&path, &descriptor.digest, "image config")
    }
}

fn read_json_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    digest: &str,
    what: &'static str,
) -> Result<T, ImageError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::MissingBlob(digest.to_string()));
        }
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| ImageError::InvalidJson {
        what,
        digest: digest.to_string(),
        source,
    })
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    context: Context,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            context: Context::new(&SHA256),
        }
    }

    /// `sha256:<hex>` of everything read so far.
    fn digest(self) -> String {
        let hash = self.context.finish();
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.context.update(&buf[..n]);
        Ok(n)
    }
}

/// A tar path as a relative path with no `..`; `None` if it escapes.
fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `dest/rel`, creating missing directories (mode 0755) and refusing to go through a symlink or
/// a non-directory, so nothing the layer holds can point outside `dest`.
fn dir_inside(dest: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut dir = dest.to_path_buf();
    for component in rel.components() {
        dir.push(component);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&dir)?,
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Unpacks one layer tar into `dest`, keeping modes, owners, mtimes, symlinks and hard links,
/// creating device nodes and FIFOs, and turning OCI whiteouts into overlayfs ones.
fn unpack_layer(reader: impl Read, dest: &Path) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};

    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw_path = entry.path()?.into_owned();
        let Some(rel) = clean_relative(&raw_path) else {
            return Err(io::Error::other(format!(
                "entry {} escapes the layer",
                raw_path.display()
            )));
        };
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            // The layer root itself (`./`).
            continue;
        };
        let name = name.to_string_lossy();
        let uid = u32::try_from(entry.header().uid()?).map_err(io::Error::other)?;
        let gid = u32::try_from(entry.header().gid()?).map_err(io::Error::other)?;
        if name == OPAQUE_WHITEOUT {
            let dir = dir_inside(dest, parent)?;
            xattr::set(&dir, "trusted.overlay.opaque", b"y").map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("failed to mark {} opaque: {e}", dir.display()),
                )
            })?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(io::Error::other(format!(
                    "invalid whiteout {}",
                    raw_path.display()
                )));
            }
            let target = dir_inside(dest, parent)?.join(hidden);
            remove_any(&target)?;
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|errno| {
                io::Error::new(
                    io::Error::from(errno).kind(),
                    format!("failed to create whiteout {}: {errno}", target.display()),
                )
            })?;
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
            continue;
        }
        let kind = entry.header().entry_type();
        let node = match kind {
            tar::EntryType::Char => Some(SFlag::S_IFCHR),
            tar::EntryType::Block => Some(SFlag::S_IFBLK),
            tar::EntryType::Fifo => Some(SFlag::S_IFIFO),
            _ => None,
        };
        if let Some(node) = node {
            // The tar crate writes these as regular files; make the real node.
            let target = dir_inside(dest, parent)?.join(&*name);
            remove_any(&target)?;
            let mode = entry.header().mode()? & 0o7777;
            let major = entry.header().device_major()?.unwrap_or(0);
            let minor = entry.header().device_minor()?.unwrap_or(0);
            mknod(
                &target,
                node,
                Mode::from_bits_truncate(mode),
                makedev(major.into(), minor.into()),
            )
            .map_err(|errno| {
                io::Error::new(
                    io::Error::from(errno).kind(),
                    format!("failed to create device node {}: {errno}", target.display()),
                )
            })?;
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
            continue;
        }
        if !entry.unpack_in(dest)? {
            return Err(io::Error::other(format!(
                "entry {} escapes the layer",
                raw_path.display()
            )));
        }
    }
    Ok(())
}

/// The entry of an image index for this machine: linux/<this arch>, else one with no platform.
fn choose_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == go_arch())
        })
        .or_else(|| manifests.iter().find(|m| m.platform.is_none()))
}

/// This machine's architecture in Go's (and OCI's) spelling.
fn go_arch() -> &'static str {
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
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use serde_json::json;

    use super::*;

    fn sha(bytes: &[u8]) -> String {
        let mut hashing = HashingReader::new(bytes);
        io::copy(&mut hashing, &mut io::sink()).expect("hash");
        hashing.digest()
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(0);
        header.set_size(0);
        header
    }

    /// Builds a layer tar.
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Layer(tar::Builder::new(Vec::new()))
        }

        fn dir(mut self, path: &str, mode: u32) -> Self {
            let mut h = header(tar::EntryType::Directory, mode, 0, 0);
            self.0
                .append_data(&mut h, path, io::empty())
                .expect("add dir");
            self
        }

        fn file(mut self, path: &str, mode: u32, owner: (u64, u64), bytes: &[u8]) -> Self {
            let mut h = header(tar::EntryType::Regular, mode, owner.0, owner.1);
            h.set_size(bytes.len() as u64);
            self.0.append_data(&mut h, path, bytes).expect("add file");
            self
        }

        fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
            let mut h = header(kind, 0o777, 0, 0);
            self.0.append_link(&mut h, path, target).expect("add link");
            self
        }

        fn plain(self) -> TestLayer {
            let tar = self.0.into_inner().expect("finish layer");
            TestLayer {
                media_type: "application/vnd.oci.image.layer.v1.tar",
                diff_id: sha(&tar),
                blob: tar,
            }
        }

        fn gzipped(self) -> TestLayer {
            let tar = self.0.into_inner().expect("finish layer");
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(&tar).expect("gzip");
            TestLayer {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
                diff_id: sha(&tar),
                blob: encoder.finish().expect("gzip"),
            }
        }
    }

    struct TestLayer {
        media_type: &'static str,
        blob: Vec<u8>,
        diff_id: String,
    }

    /// The files of an archive before they are tarred, so tests can tamper with them.
    type Files = Vec<(String, Vec<u8>)>;

    struct Written {
        config_digest: String,
        manifest_digest: String,
    }

    fn write_archive(
        path: &Path,
        annotations: serde_json::Value,
        layers: &[TestLayer],
        process: serde_json::Value,
        tamper: impl FnOnce(&mut Files),
    ) -> Written {
        let config = serde_json::to_vec(&json!({
            "architecture": go_arch(),
            "os": "linux",
            "config": process,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        }))
        .expect("config");
        let config_digest = sha(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": sha(&l.blob),
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        }))
        .expect("manifest");
        let manifest_digest = sha(&manifest);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": annotations,
            }],
        }))
        .expect("index");
        let mut files: Files = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), index),
        ];
        for blob in layers
            .iter()
            .map(|l| l.blob.clone())
            .chain([config, manifest])
        {
            files.push((format!("blobs/sha256/{}", &sha(&blob)[7..]), blob));
        }
        tamper(&mut files);
        let mut archive = tar::Builder::new(Vec::new());
        for (name, bytes) in &files {
            let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
            h.set_size(bytes.len() as u64);
            archive
                .append_data(&mut h, name, bytes.as_slice())
                .expect("add to archive");
        }
        fs::write(path, archive.into_inner().expect("finish archive")).expect("write archive");
        Written {
            config_digest,
            manifest_digest,
        }
    }

    fn busybox_layer() -> TestLayer {
        Layer::new()
            .dir("bin/", 0o755)
            .file("bin/busybox", 0o755, (0, 0), b"#!fake busybox\n")
            .link(tar::EntryType::Symlink, "bin/sh", "busybox")
            .link(tar::EntryType::Link, "bin/ls", "bin/busybox")
            .dir("home/", 0o755)
            .file("home/user/.profile", 0o600, (1000, 1001), b"export A=1\n")
            .dir("tmp/", 0o1777)
            .plain()
    }

    fn tmp_is_empty(store: &ImageStore) -> bool {
        fs::read_dir(store.root().join("tmp"))
            .expect("read tmp")
            .next()
            .is_none()
    }

    #[test]
    fn import_resolve_and_reimport() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("busybox.tar");
        let written = write_archive(
            &archive,
            json!({ REF_NAME_ANNOTATION: "windlass.local/busybox:latest" }),
            &[busybox_layer()],
            json!({
                "Entrypoint": ["/bin/sh"],
                "Cmd": ["-c", "echo hi"],
                "Env": ["PATH=/bin"],
                "WorkingDir": "/tmp",
                "User": "1000:1001",
                "StopSignal": "SIGQUIT",
            }),
            |_| {},
        );
        let store = ImageStore::open(&dir.path().join("data")).expect("open");
        let imported = store.import(&archive).expect("import");
        assert_eq!(imported.len(), 1);
        assert_eq!(imported[0].reference, "windlass.local/busybox:latest");
        assert_eq!(imported[0].id, written.config_digest);

        let image = store.resolve("windlass.local/busybox").expect("resolve");
        assert_eq!(image.reference, "windlass.local/busybox:latest");
        assert_eq!(image.id, written.config_digest);
        assert_eq!(image.manifest_digest, written.manifest_digest);
        assert_eq!(
            image.config,
            ImageConfig {
                entrypoint: vec!["/bin/sh".into()],
                cmd: vec!["-c".into(), "echo hi".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: Some("/tmp".into()),
                user: Some("1000:1001".into()),
                stop_signal: Some("SIGQUIT".into()),
            }
        );
        assert_eq!(image.layers.len(), 1);
        let layer = &image.layers[0];
        let busybox = fs::metadata(layer.join("bin/busybox")).expect("busybox");
        assert_eq!(busybox.mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(layer.join("bin/sh")).expect("symlink"),
            Path::new("busybox")
        );
        assert_eq!(
            fs::metadata(layer.join("bin/ls")).expect("hardlink").ino(),
            busybox.ino()
        );
        let profile = fs::metadata(layer.join("home/user/.profile")).expect("profile");
        assert_eq!((profile.uid(), profile.gid()), (1000, 1001));
        assert_eq!(profile.mode() & 0o7777, 0o600);
        let tmp = fs::metadata(layer.join("tmp")).expect("tmp");
        assert_eq!(tmp.mode() & 0o7777, 0o1777);
        assert!(tmp_is_empty(&store));

        // Again: the same result, the layer is not unpacked a second time.
        let layer_ino = fs::metadata(layer).expect("layer").ino();
        assert_eq!(store.import(&archive).expect("import again"), imported);
        assert_eq!(fs::metadata(layer).expect("layer").ino(), layer_ino);
        assert_eq!(store.list().expect("list"), imported);
        assert!(imported[0].size > 0);

        // By image ID and by digest too; a reopened store sees the same.
        let store = ImageStore::open(&dir.path().join("data")).expect("reopen");
        assert_eq!(store.resolve(&written.config_digest).expect("by id"), image);
        let by_digest = format!("windlass.local/busybox@{}", written.manifest_digest);
        assert_eq!(store.resolve(&by_digest).expect("by digest").id, image.id);
    }

    #[test]
    fn references_are_normalised() {
        for (input, normalised) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("bitnami/redis", "docker.io/bitnami/redis:latest"),
            ("windlass.local/busybox", "windlass.local/busybox:latest"),
            ("windlass.local/busybox:v2", "windlass.local/busybox:v2"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/a/b:c", "localhost:5000/a/b:c"),
            (
                "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "docker.io/library/busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ] {
            assert_eq!(
                normalize_reference(input).expect(input),
                normalised,
                "{input}"
            );
        }
        for bad in [
            "",
            "UPPER",
            "a//b",
            "busybox:",
            "busybox@sha256:zz",
            "-x",
            "a b",
        ] {
            assert!(
                matches!(
                    normalize_reference(bad),
                    Err(ImageError::InvalidReference(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_image_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        assert!(store.list().expect("list").is_empty());
        match store.resolve("nope") {
            Err(ImageError::NotFound(reference)) => {
                assert_eq!(reference, "docker.io/library/nope:latest")
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[test]
    fn tag_only_ref_name_takes_the_containerd_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("foo.tar");
        write_archive(
            &archive,
            json!({ REF_NAME_ANNOTATION: "v1", CONTAINERD_NAME_ANNOTATION: "docker.io/library/foo" }),
            &[Layer::new().file("hello", 0o644, (0, 0), b"hi\n").gzipped()],
            json!({ "Cmd": ["sh"] }),
            |_| {},
        );
        let store = ImageStore::open(dir.path()).expect("open");
        let imported = store.import(&archive).expect("import");
        assert_eq!(imported[0].reference, "docker.io/library/foo:v1");
        let image = store.resolve("foo:v1").expect("resolve");
        assert_eq!(
            fs::read(image.layers[0].join("hello")).expect("hello"),
            b"hi\n"
        );
        assert_eq!(image.config.cmd, ["sh"]);
        assert_eq!(image.config.working_dir, None);
    }

    #[test]
    fn a_bad_digest_is_rejected_and_the_store_is_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let archive = dir.path().join("bad.tar");
        let annotations = json!({ REF_NAME_ANNOTATION: "windlass.local/bad:latest" });
        write_archive(
            &archive,
            annotations.clone(),
            &[busybox_layer()],
            json!({}),
            |files| {
                // Flip a byte of the layer blob, keeping its name.
                let (_, layer) = files
                    .iter_mut()
                    .find(|(name, _)| name.starts_with("blobs/"))
                    .expect("layer blob");
                layer[600] ^= 0xff;
            },
        );
        let err = store.import(&archive).expect_err("tampered blob");
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
        assert!(store.list().expect("list").is_empty());
        assert!(tmp_is_empty(&store));

        // A config whose diff ID does not match the layer is refused, and no layer is kept.
        write_archive(
            &archive,
            annotations.clone(),
            &[TestLayer {
                diff_id: sha(b"something else"),
                ..busybox_layer()
            }],
            json!({}),
            |_| {},
        );
        let err = store.import(&archive).expect_err("wrong diff ID");
        assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err:?}");
        assert_eq!(
            fs::read_dir(store.root().join("layers"))
                .expect("layers")
                .count(),
            0
        );

        // Cut short in the middle of a blob.
        write_archive(
            &archive,
            annotations.clone(),
            &[busybox_layer()],
            json!({}),
            |_| {},
        );
        let bytes = fs::read(&archive).expect("read archive");
        fs::write(&archive, &bytes[..bytes.len() / 2]).expect("truncate");
        let err = store.import(&archive).expect_err("truncated");
        assert!(
            matches!(
                err,
                ImageError::Truncated { .. } | ImageError::Archive { .. }
            ),
            "{err:?}"
        );

        // Not a tar at all.
        fs::write(&archive, vec![b'x'; 2000]).expect("write junk");
        let err = store.import(&archive).expect_err("junk");
        assert!(matches!(err, ImageError::Archive { .. }), "{err:?}");

        // The store still works.
        write_archive(&archive, annotations, &[busybox_layer()], json!({}), |_| {});
        store.import(&archive).expect("good import");
        assert_eq!(store.list().expect("list").len(), 1);
        assert!(tmp_is_empty(&store));
    }

    #[test]
    fn whiteouts_become_overlayfs_whiteouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("wh.tar");
        write_archive(
            &archive,
            json!({ REF_NAME_ANNOTATION: "windlass.local/wh:1" }),
            &[
                Layer::new()
                    .file("etc/gone", 0o644, (0, 0), b"x")
                    .file("dir/old", 0o644, (0, 0), b"x")
                    .plain(),
                Layer::new()
                    .file("etc/.wh.gone", 0o644, (0, 0), b"")
                    .dir("dir/", 0o755)
                    .file("dir/.wh..wh..opq", 0o644, (0, 0), b"")
                    .file("dir/new", 0o644, (0, 0), b"y")
                    .gzipped(),
            ],
            json!({}),
            |_| {},
        );
        let store = ImageStore::open(dir.path()).expect("open");
        store.import(&archive).expect("import");
        let image = store.resolve("windlass.local/wh:1").expect("resolve");
        assert_eq!(image.layers.len(), 2);
        let (lower, upper) = (&image.layers[0], &image.layers[1]);
        assert!(lower.join("etc/gone").is_file());
        let whiteout = fs::symlink_metadata(upper.join("etc/gone")).expect("whiteout");
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0);
        assert!(!upper.join("etc/.wh.gone").exists());
        assert_eq!(
            xattr::get(upper.join("dir"), "trusted.overlay.opaque").expect("getxattr"),
            Some(b"y".to_vec())
        );
        assert!(!upper.join("dir/.wh..wh..opq").exists());
        assert!(upper.join("dir/new").is_file());
    }

    #[test]
    fn a_whiteout_through_a_symlink_cannot_leave_the_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("victim"), "keep").expect("write victim");
        let archive = dir.path().join("evil.tar");
        write_archive(
            &archive,
            json!({ REF_NAME_ANNOTATION: "windlass.local/evil:1" }),
            &[Layer::new()
                .link(
                    tar::EntryType::Symlink,
                    "escape",
                    &outside.display().to_string(),
                )
                .file("escape/.wh.victim", 0o644, (0, 0), b"")
                .plain()],
            json!({}),
            |_| {},
        );
        let store = ImageStore::open(&dir.path().join("data")).expect("open");
        let err = store.import(&archive).expect_err("escaping whiteout");
        assert!(matches!(err, ImageError::Unpack { .. }), "{err:?}");
        assert_eq!(
            fs::read_to_string(outside.join("victim")).expect("victim"),
            "keep"
        );
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn the_table_looks_like_crictl() {
        let table = format_table(&[ImageSummary {
            reference: "windlass.local/busybox:latest".into(),
            id: format!("sha256:{}", "ab".repeat(32)),
            size: 1_234_567,
        }]);
        assert_eq!(
            table,
            "IMAGE                           ID              SIZE\n\
             windlass.local/busybox:latest   ababababababa   1.235MB\n"
        );
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_260_000), "4.26MB");
    }

    // ---- pulling ----

    #[test]
    fn registry_references_are_parsed() {
        let parse = |r: &str| RegistryReference::parse(r).expect(r);
        let busybox = parse("busybox");
        assert_eq!(
            busybox,
            RegistryReference {
                normalised: "docker.io/library/busybox:latest".into(),
                registry: "docker.io".into(),
                endpoint: "registry-1.docker.io".into(),
                repository: "library/busybox".into(),
                tag: Some("latest".into()),
                digest: None,
            }
        );
        let local = parse("localhost:5000/x");
        assert_eq!(
            (
                local.registry.as_str(),
                local.endpoint.as_str(),
                local.repository.as_str(),
                local.tag.as_deref()
            ),
            ("localhost:5000", "localhost:5000", "x", Some("latest"))
        );
        let nested = parse("127.0.0.1:5000/test/busybox:1.0");
        assert_eq!(nested.endpoint, "127.0.0.1:5000");
        assert_eq!(nested.repository, "test/busybox");
        assert_eq!(nested.tag.as_deref(), Some("1.0"));
        assert_eq!(nested.normalised, "127.0.0.1:5000/test/busybox:1.0");

        let digest = format!("sha256:{}", "ab".repeat(32));
        let pinned = parse(&format!("quay.io/org/app@{digest}"));
        assert_eq!(pinned.repository, "org/app");
        assert_eq!(pinned.tag, None);
        assert_eq!(pinned.digest.as_deref(), Some(digest.as_str()));
        let both = parse(&format!("bitnami/redis:7@{digest}"));
        assert_eq!(both.endpoint, "registry-1.docker.io");
        assert_eq!(both.repository, "bitnami/redis");
        assert_eq!(both.tag.as_deref(), Some("7"));
        assert_eq!(both.digest.as_deref(), Some(digest.as_str()));
        let oci = both.oci_reference();
        assert_eq!(
            (oci.resolve_registry(), oci.repository(), oci.digest()),
            (
                "registry-1.docker.io",
                "bitnami/redis",
                Some(digest.as_str())
            )
        );

        let v6 = parse("[::1]:5000/x:y");
        assert_eq!(v6.registry, "[::1]:5000");
        assert_eq!(host_of(&v6.registry), "::1");
        assert!(matches!(
            RegistryReference::parse("Bad/Name"),
            Err(ImageError::InvalidReference(_))
        ));
    }

    #[test]
    fn plain_http_only_for_loopback_and_insecure_registries() {
        let allows = |r: &str, insecure: &[&str]| {
            let insecure: Vec<String> = insecure.iter().map(|s| s.to_string()).collect();
            RegistryReference::parse(r).expect(r).allows_http(&insecure)
        };
        assert!(allows("localhost/x", &[]));
        assert!(allows("localhost:5000/x", &[]));
        assert!(allows("127.0.0.1:5000/x", &[]));
        assert!(allows("[::1]:5000/x", &[]));
        assert!(!allows("busybox", &[]));
        assert!(!allows("registry.example:5000/x", &[]));
        assert!(!allows("10.0.0.1:5000/x", &["10.0.0.1:5001"]));
        assert!(allows(
            "registry.example:5000/x",
            &["registry.example:5000"]
        ));
        assert!(allows("registry.example:5000/x", &["registry.example"]));
    }

    #[test]
    fn manifest_media_types_are_recognised() {
        let digest = "sha256:x";
        for media_type in INDEX_TYPES.iter().chain(&MANIFEST_TYPES) {
            let body = serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": media_type }))
                .expect("json");
            assert_eq!(
                manifest_media_type(&body, digest).expect(media_type),
                *media_type
            );
        }
        // OCI documents may leave mediaType out.
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            manifest_media_type(index, digest).expect("index"),
            "application/vnd.oci.image.index.v1+json"
        );
        let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            manifest_media_type(manifest, digest).expect("manifest"),
            "application/vnd.oci.image.manifest.v1+json"
        );
        for refused in [
            // Docker v2 schema 1.
            &br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#[..],
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#,
            br#"{"schemaVersion":2}"#,
        ] {
            assert!(
                matches!(
                    manifest_media_type(refused, digest),
                    Err(ImageError::UnsupportedMediaType { .. })
                ),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        assert!(matches!(
            manifest_media_type(b"<html>", digest),
            Err(ImageError::InvalidJson { .. })
        ));
        for (media_type, gzip) in [
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(true)),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(true),
            ),
            ("application/vnd.oci.image.layer.v1.tar", Some(false)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", None),
        ] {
            assert_eq!(
                layer_compression(media_type).map(|c| matches!(c, Compression::Gzip)),
                gzip,
                "{media_type}"
            );
        }
    }

    #[test]
    fn the_index_entry_for_this_platform_is_chosen() {
        let entry = |digest: &str, platform: Option<(&str, &str)>| Descriptor {
            media_type: MANIFEST_TYPES[0].into(),
            digest: digest.into(),
            size: 1,
            annotations: BTreeMap::new(),
            platform: platform.map(|(os, architecture)| Platform {
                os: os.into(),
                architecture: architecture.into(),
            }),
        };
        let other_arch = if go_arch() == "s390x" {
            "riscv64"
        } else {
            "s390x"
        };
        let index = [
            entry("windows", Some(("windows", go_arch()))),
            entry("other", Some(("linux", other_arch))),
            entry("ours", Some(("linux", go_arch()))),
            entry("any", None),
        ];
        assert_eq!(choose_platform(&index).expect("ours").digest, "ours");
        assert!(choose_platform(&index[..2]).is_none());
        assert_eq!(
            choose_platform(&[index[1].clone(), index[3].clone()])
                .expect("any")
                .digest,
            "any"
        );
    }

    #[test]
    fn registry_errors_carry_the_registry_message() {
        let envelope: oci_client::errors::OciEnvelope = serde_json::from_value(json!({
            "errors": [{ "code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {} }],
        }))
        .expect("envelope");
        let error = oci_client::errors::OciDistributionError::RegistryError {
            envelope,
            url: "http://r/v2/x/manifests/nope".into(),
        };
        assert_eq!(
            describe_registry_error(&error),
            "MANIFEST_UNKNOWN: manifest unknown (http://r/v2/x/manifests/nope)"
        );
        let error = oci_client::errors::OciDistributionError::UnauthorizedError {
            url: "https://r/v2/x/manifests/1".into(),
        };
        assert!(describe_registry_error(&error).contains("401"));
    }

    /// A registry in this process: `/v2/` asks for a bearer token from `/token` (Docker Hub's
    /// flow), manifests and blobs are served from a map and need the token.
    struct FakeRegistry {
        addr: std::net::SocketAddr,
        state: std::sync::Arc<FakeState>,
        _server: tokio::task::JoinHandle<()>,
    }

    #[derive(Default)]
    struct FakeState {
        /// Path under `/v2/` → (content type, body).
        objects: std::sync::Mutex<BTreeMap<String, (String, Vec<u8>)>>,
        /// Paths of the blob requests served.
        blob_requests: std::sync::Mutex<Vec<String>>,
        /// Scopes tokens were asked for.
        scopes: std::sync::Mutex<Vec<String>>,
    }

    impl FakeRegistry {
        async fn start() -> Self {
            use axum::http::{StatusCode, header};
            use axum::response::IntoResponse;

            let state = std::sync::Arc::new(FakeState::default());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            let shared = state.clone();
            let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
                let state = shared.clone();
                async move {
                    let path = request.uri().path().to_string();
                    if path == "/token" {
                        let query = request.uri().query().unwrap_or_default().to_string();
                        state.scopes.lock().expect("lock").push(query);
                        return (StatusCode::OK, r#"{"token":"secret-token"}"#).into_response();
                    }
                    let authorised = request
                        .headers()
                        .get(header::AUTHORIZATION)
                        .is_some_and(|v| v == "Bearer secret-token");
                    if !authorised {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(
                                header::WWW_AUTHENTICATE,
                                format!(r#"Bearer realm="http://{addr}/token",service="fake""#),
                            )],
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                        )
                            .into_response();
                    }
                    let Some(rest) = path.strip_prefix("/v2/") else {
                        return StatusCode::NOT_FOUND.into_response();
                    };
                    if rest.is_empty() {
                        return (StatusCode::OK, "{}").into_response();
                    }
                    if rest.contains("/blobs/") {
                        state.blob_requests.lock().expect("lock").push(rest.to_string());
                    }
                    match state.objects.lock().expect("lock").get(rest) {
                        Some((content_type, body)) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, content_type.clone())],
                            body.clone(),
                        )
                            .into_response(),
                        None => (
                            StatusCode::NOT_FOUND,
                            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                        )
                            .into_response(),
                    }
                }
            });
            let server = tokio::spawn(async move {
                axum::serve(listener, app).await.expect("serve");
            });
            FakeRegistry {
                addr,
                state,
                _server: server,
            }
        }

        fn put(&self, path: String, content_type: &str, body: Vec<u8>) {
            self.state
                .objects
                .lock()
                .expect("lock")
                .insert(path, (content_type.to_string(), body));
        }

        /// Serves a Docker manifest list (another platform first, then ours) for
        /// `team/app:<tag>`, with `layer` as the one layer; returns the config and list digests.
        fn put_image(&self, tag: &str, layer: &TestLayer, tamper: bool) -> (String, String) {
            let docker_layer = "application/vnd.docker.image.rootfs.diff.tar.gzip";
            let config = serde_json::to_vec(&json!({
                "architecture": go_arch(),
                "os": "linux",
                "config": { "Cmd": ["sh"] },
                "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
            }))
            .expect("config");
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPES[1],
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": sha(&config),
                    "size": config.len(),
                },
                "layers": [{
                    "mediaType": docker_layer,
                    "digest": sha(&layer.blob),
                    "size": layer.blob.len(),
                }],
            }))
            .expect("manifest");
            let other_arch = if go_arch() == "s390x" {
                "riscv64"
            } else {
                "s390x"
            };
            let list = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": INDEX_TYPES[1],
                "manifests": [
                    {
                        "mediaType": MANIFEST_TYPES[1],
                        "digest": format!("sha256:{}", "0".repeat(64)),
                        "size": 10,
                        "platform": { "os": "linux", "architecture": other_arch },
                    },
                    {
                        "mediaType": MANIFEST_TYPES[1],
                        "digest": sha(&manifest),
                        "size": manifest.len(),
                        "platform": { "os": "linux", "architecture": go_arch() },
                    },
                ],
            }))
            .expect("list");
            let mut blob = layer.blob.clone();
            if tamper {
                let middle = blob.len() / 2;
                blob[middle] ^= 0xff;
            }
            self.put(
                format!("team/app/blobs/{}", sha(&layer.blob)),
                docker_layer,
                blob,
            );
            self.put(
                format!("team/app/blobs/{}", sha(&config)),
                "application/octet-stream",
                config.clone(),
            );
            self.put(
                format!("team/app/manifests/{}", sha(&manifest)),
                MANIFEST_TYPES[1],
                manifest,
            );
            self.put(
                format!("team/app/manifests/{}", sha(&list)),
                INDEX_TYPES[1],
                list.clone(),
            );
            let list_digest = sha(&list);
            self.put(format!("team/app/manifests/{tag}"), INDEX_TYPES[1], list);
            (sha(&config), list_digest)
        }

        fn blob_requests(&self) -> usize {
            self.state.blob_requests.lock().expect("lock").len()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pull_follows_the_token_flow_and_the_platform_and_reuses_blobs() {
        let registry = FakeRegistry::start().await;
        let layer = Layer::new()
            .dir("bin/", 0o755)
            .file("bin/hello", 0o755, (0, 0), b"#!/bin/sh\necho hello\n")
            .gzipped();
        let (config_digest, list_digest) = registry.put_image("v1", &layer, false);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let reference = format!("{}/team/app:v1", registry.addr);

        let pulled = store.pull(&reference, None).await.expect("pull");
        assert_eq!(pulled.reference, reference);
        assert_eq!(pulled.id, config_digest);
        assert!(
            registry
                .state
                .scopes
                .lock()
                .expect("lock")
                .iter()
                .any(|q| q.contains("repository%3Ateam%2Fapp%3Apull") && q.contains("service=fake")),
            "a pull token was asked for: {:?}",
            registry.state.scopes.lock().expect("lock")
        );
        assert_eq!(registry.blob_requests(), 2, "config and layer");
        let image = store.resolve(&reference).expect("resolve");
        assert_eq!(image.config.cmd, ["sh"]);
        assert_eq!(
            fs::read(image.layers[0].join("bin/hello")).expect("hello"),
            b"#!/bin/sh\necho hello\n"
        );
        assert_eq!(store.list().expect("list"), std::slice::from_ref(&pulled));
        assert!(tmp_is_empty(&store));

        // Again: the manifests are asked for, no blob is fetched, the layer is not unpacked again.
        let layer_ino = fs::metadata(&image.layers[0]).expect("layer").ino();
        assert_eq!(
            store.pull(&reference, None).await.expect("pull again"),
            pulled
        );
        assert_eq!(registry.blob_requests(), 2);
        assert_eq!(
            fs::metadata(&image.layers[0]).expect("layer").ino(),
            layer_ino
        );

        // By digest, of the platform's manifest or of the list: recorded under the reference as
        // given and found by it, from blobs already there.
        for digest in [image.manifest_digest.clone(), list_digest] {
            let by_digest = format!("{}/team/app@{digest}", registry.addr);
            let pulled = store.pull(&by_digest, None).await.expect("pull by digest");
            assert_eq!(pulled.id, config_digest);
            assert_eq!(
                store.resolve(&by_digest).expect("resolve by digest").id,
                config_digest
            );
        }
        assert_eq!(registry.blob_requests(), 2);
        let pulled = store
            .list()
            .expect("list")
            .into_iter()
            .find(|i| i.reference == reference)
            .expect("still listed");

        // A layer that does not match its digest is refused; nothing is recorded.
        let other = Layer::new()
            .file("other", 0o644, (0, 0), b"other\n")
            .gzipped();
        registry.put_image("bad", &other, true);
        let err = store
            .pull(&format!("{}/team/app:bad", registry.addr), None)
            .await
            .expect_err("tampered layer");
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");

        // A missing tag: the registry's message.
        let err = store
            .pull(&format!("{}/team/app:nope", registry.addr), None)
            .await
            .expect_err("missing tag");
        let message = err.to_string();
        assert!(
            message.contains("MANIFEST_UNKNOWN: manifest unknown")
                && message.contains("team/app:nope"),
            "{message}"
        );

        // The store is as it was.
        assert_eq!(store.list().expect("list").len(), 3);
        assert!(store.list().expect("list").contains(&pulled));
        assert!(tmp_is_empty(&store));
        assert_eq!(
            fs::read_dir(store.root().join("layers"))
                .expect("layers")
                .count(),
            1
        );
    }
}
