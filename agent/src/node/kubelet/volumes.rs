//! Pod volumes: emptyDir, hostPath, configMap, secret, downwardAPI, projected.
//!
//! Volumes live where kubelet puts them, `<pods_dir>/<uid>/volumes/<plugin>/<name>`, with
//! kubelet's escaped plugin names ([`EMPTY_DIR_PLUGIN`], ...), so tools that know kubelet's
//! layout find them. hostPath volumes are the host path itself.
//!
//! ConfigMap, Secret, downward-API and projected volumes are written the way kubelet's
//! `AtomicWriter` does: the files go in a fresh `..<timestamp>` directory, a `..data_tmp`
//! symlink to it is renamed over `..data` (one atomic step), the names users see are symlinks
//! `name -> ..data/name`, and the previous timestamped directory is removed afterwards. A
//! running container therefore sees either the old or the new contents, never a mix. Secret,
//! downward-API and projected volumes sit on a tmpfs, as kubelet backs them with a memory
//! emptyDir, so secret bytes never reach the node's disk.
//!
//! Not implemented: fsGroup ownership changes, `defaultUser`/`user`, tmpfs sizing from pod
//! memory limits (a memory emptyDir is sized from `sizeLimit` only), service account tokens,
//! cluster trust bundles and pod certificates in projected volumes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};
use nix::mount::{MntFlags, MsFlags};

use super::env::{
    self, EnvError, NodeResources, ObjectSource, Quantity, QuantityError, SourceError,
};

/// kubelet's directory name for emptyDir volumes.
pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";
/// kubelet's directory name for configMap volumes.
pub const CONFIG_MAP_PLUGIN: &str = "kubernetes.io~configmap";
/// kubelet's directory name for secret volumes.
pub const SECRET_PLUGIN: &str = "kubernetes.io~secret";
/// kubelet's directory name for projected volumes.
pub const PROJECTED_PLUGIN: &str = "kubernetes.io~projected";
/// kubelet's directory name for downward-API volumes.
pub const DOWNWARD_API_PLUGIN: &str = "kubernetes.io~downward-api";

/// The mode of files in configMap, secret, downward-API and projected volumes when the pod
/// does not set one.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// The mode of an emptyDir's directory when the pod does not set one.
const EMPTY_DIR_MODE: u32 = 0o777;
/// The symlink naming the current timestamped directory of an atomically written volume.
const DATA_LINK: &str = "..data";
/// The temporary symlink renamed over [`DATA_LINK`].
const DATA_LINK_TMP: &str = "..data_tmp";

/// Why a pod volume could not be set up, updated, mounted or removed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A filesystem operation failed.
    #[error("failed to {op} {path} for volume {volume}")]
    Io {
        /// The volume (or pod uid for pod-wide operations).
        volume: String,
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Mounting a tmpfs failed.
    #[error("failed to mount tmpfs at {path} for volume {volume}")]
    Mount {
        /// The volume.
        volume: String,
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// Unmounting something under a pod directory failed.
    #[error("failed to unmount {path}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// Something is still mounted under a pod directory after unmounting; it is not removed.
    #[error("{path} is still mounted, not removing the pod directory")]
    StillMounted {
        /// The mount point.
        path: PathBuf,
    },
    /// A hostPath exists with another type than the volume's `type` asks for.
    #[error("hostPath type check failed for volume {volume}: {path} is not a {expected}")]
    HostPathType {
        /// The volume.
        volume: String,
        /// The host path.
        path: PathBuf,
        /// The expected type (`directory`, `file`, `socket file`, ...).
        expected: &'static str,
    },
    /// A hostPath volume has an unknown `type` or a relative path.
    #[error("volume {volume}: invalid hostPath {path} of type {type_:?}")]
    InvalidHostPath {
        /// The volume.
        volume: String,
        /// The host path.
        path: PathBuf,
        /// The `type` field.
        type_: String,
    },
    /// A referenced ConfigMap does not exist and the volume is not optional.
    #[error("volume {volume}: configmap \"{name}\" not found")]
    ConfigMapNotFound {
        /// The volume.
        volume: String,
        /// The ConfigMap.
        name: String,
    },
    /// A referenced Secret does not exist and the volume is not optional.
    #[error("volume {volume}: secret \"{name}\" not found")]
    SecretNotFound {
        /// The volume.
        volume: String,
        /// The Secret.
        name: String,
    },
    /// An `items` entry names a key the ConfigMap or Secret lacks.
    #[error("volume {volume}: {kind} {name} references non-existent key: {key}")]
    MissingKey {
        /// The volume.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The object.
        name: String,
        /// The missing key.
        key: String,
    },
    /// Reading a ConfigMap or Secret failed.
    #[error("volume {volume}: failed to read its source")]
    Source {
        /// The volume.
        volume: String,
        /// The source error.
        #[source]
        source: SourceError,
    },
    /// A downward-API item could not be resolved.
    #[error("volume {volume}: downward API item {path}")]
    DownwardApi {
        /// The volume.
        volume: String,
        /// The item's path.
        path: String,
        /// Why (boxed to keep the error small).
        #[source]
        source: Box<EnvError>,
    },
    /// A `sizeLimit` could not be parsed.
    #[error("volume {volume}: invalid sizeLimit")]
    SizeLimit {
        /// The volume.
        volume: String,
        /// The parse error.
        #[source]
        source: QuantityError,
    },
    /// A volume type or source this kubelet does not implement.
    #[error("volume {volume}: {what} is not supported")]
    Unsupported {
        /// The volume.
        volume: String,
        /// What is unsupported.
        what: String,
    },
    /// A file path in a volume's items, a volume name or a pod uid is not a safe relative name.
    #[error("volume {volume}: invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The volume (or pod uid).
        volume: String,
        /// The offending path.
        path: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The pod has no uid.
    #[error("pod {0} has no uid")]
    MissingUid(String),
    /// A volumeMount names a volume the pod does not define (or that was not set up).
    #[error("container {container}: volumeMount {volume} has no such volume")]
    UnknownVolume {
        /// The container.
        container: String,
        /// The volume name in the mount.
        volume: String,
    },
    /// A subPath leaves its volume through `..`, an absolute path or a symlink.
    #[error("volume {volume}: subPath {sub_path:?} escapes the volume")]
    SubPathEscape {
        /// The volume.
        volume: String,
        /// The subPath.
        sub_path: String,
    },
    /// A subPath does not exist in a volume where kubelet does not create it.
    #[error("volume {volume}: subPath {path} does not exist")]
    SubPathMissing {
        /// The volume.
        volume: String,
        /// The joined host path.
        path: PathBuf,
    },
    /// A subPathExpr refers to variables the container does not define (kubelet's message).
    #[error("volume {volume}: missing value for {vars}")]
    SubPathExpr {
        /// The volume.
        volume: String,
        /// The unresolved variable names, comma separated.
        vars: String,
    },
    /// The blocking task writing a volume panicked or was cancelled.
    #[error("volume {volume}: setup task failed")]
    Task {
        /// The volume.
        volume: String,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The kind of a pod volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// emptyDir (on disk, or a tmpfs for `medium: Memory`).
    EmptyDir,
    /// hostPath.
    HostPath,
    /// configMap (read-only).
    ConfigMap,
    /// secret (read-only, on tmpfs).
    Secret,
    /// downwardAPI (read-only, on tmpfs).
    DownwardApi,
    /// projected (read-only, on tmpfs).
    Projected,
}

impl VolumeKind {
    /// Whether containers always get this kind of volume read-only.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Self::ConfigMap | Self::Secret | Self::DownwardApi | Self::Projected
        )
    }

    /// Whether kubelet creates a missing subPath in this kind of volume.
    fn creates_sub_paths(self) -> bool {
        matches!(self, Self::EmptyDir | Self::HostPath)
    }
}

/// One set-up volume of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolume {
    /// Where the volume is on the host.
    pub host_path: PathBuf,
    /// Its kind.
    pub kind: VolumeKind,
    /// Whether every mount of it is read-only.
    pub read_only: bool,
}

/// The volumes of one pod, by volume name, as [`VolumeManager::setup`] made them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes {
    volumes: BTreeMap<String, PodVolume>,
}

/// A bind mount for a container, built from a `volumeMount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host path to bind (the volume, or the resolved subPath inside it).
    pub host_path: PathBuf,
    /// Where it appears in the container (`mountPath`).
    pub container_path: String,
    /// Whether the bind is read-only (the mount asks for it or the volume kind is read-only).
    pub read_only: bool,
}

impl PodVolumes {
    /// The volume called `name`.
    pub fn get(&self, name: &str) -> Option<&PodVolume> {
        self.volumes.get(name)
    }

    /// All volumes, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PodVolume)> {
        self.volumes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The mounts of `container`'s `volumeMounts`, in order. A `subPathExpr` is expanded with
    /// no variables, so one that references any fails; use [`Self::mounts_for_env`] to pass
    /// the container's environment.
    pub fn mounts_for(&self, container: &Container) -> Result<Vec<Mount>, VolumeError> {
        self.mounts_for_env(container, &[])
    }

    /// The mounts of `container`'s `volumeMounts`, with `subPathExpr` expanded from `env` (the
    /// container's environment from [`env::container_env`]). A subPath is resolved on the host:
    /// it must stay inside the volume after following symlinks, and in an emptyDir or hostPath
    /// it is created as a directory when missing, as kubelet does.
    pub fn mounts_for_env(
        &self,
        container: &Container,
        env_vars: &[(String, String)],
    ) -> Result<Vec<Mount>, VolumeError> {
        let mut mounts = Vec::new();
        for vm in container.volume_mounts.iter().flatten() {
            let volume = self
                .volumes
                .get(&vm.name)
                .ok_or_else(|| VolumeError::UnknownVolume {
                    container: container.name.clone(),
                    volume: vm.name.clone(),
                })?;
            let sub_path = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(p), _) if !p.is_empty() => p.clone(),
                (_, Some(expr)) if !expr.is_empty() => {
                    let missing = std::cell::RefCell::new(BTreeSet::new());
                    let expanded = env::expand(expr, &|name| {
                        let value = env_vars
                            .iter()
                            .rev()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                            .filter(|v| !v.is_empty());
                        if value.is_none() {
                            missing.borrow_mut().insert(name.to_owned());
                        }
                        Some(value.unwrap_or_default())
                    });
                    let missing = missing.into_inner();
                    if !missing.is_empty() {
                        return Err(VolumeError::SubPathExpr {
                            volume: vm.name.clone(),
                            vars: missing.into_iter().collect::<Vec<_>>().join(", "),
                        });
                    }
                    expanded
                }
                _ => String::new(),
            };
            let host_path = if sub_path.is_empty() {
                volume.host_path.clone()
            } else {
                resolve_sub_path(&vm.name, volume, &sub_path)?
            };
            mounts.push(Mount {
                host_path,
                container_path: vm.mount_path.clone(),
                read_only: vm.read_only == Some(true) || volume.read_only,
            });
        }
        Ok(mounts)
    }
}

/// Resolves `sub_path` inside `volume`, refusing anything that leaves it, and creating missing
/// directories where kubelet would.
fn resolve_sub_path(
    name: &str,
    volume: &PodVolume,
    sub_path: &str,
) -> Result<PathBuf, VolumeError> {
    let escape = || VolumeError::SubPathEscape {
        volume: name.to_owned(),
        sub_path: sub_path.to_owned(),
    };
    let rel = Path::new(sub_path);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(escape());
    }
    let io_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| VolumeError::Io {
            volume: name.to_owned(),
            op,
            path,
            source,
        }
    };
    let root =
        std::fs::canonicalize(&volume.host_path).map_err(io_err("resolve", &volume.host_path))?;
    let mode = std::fs::metadata(&root)
        .map_err(io_err("stat", &root))?
        .permissions()
        .mode()
        & 0o7777;
    let mut current = root.clone();
    for component in rel.components() {
        let Component::Normal(part) = component else {
            continue;
        };
        let next = current.join(part);
        match std::fs::symlink_metadata(&next) {
            Ok(_) => {
                let resolved = std::fs::canonicalize(&next).map_err(io_err("resolve", &next))?;
                if !resolved.starts_with(&root) {
                    return Err(escape());
                }
                current = resolved;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !volume.kind.creates_sub_paths() {
                    return Err(VolumeError::SubPathMissing {
                        volume: name.to_owned(),
                        path: volume.host_path.join(rel),
                    });
                }
                std::fs::create_dir(&next).map_err(io_err("create subPath", &next))?;
                std::fs::set_permissions(&next, std::fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &next))?;
                current = next;
            }
            Err(e) => return Err(io_err("stat", &next)(e)),
        }
    }
    Ok(current)
}

/// Creates, updates and removes pod volumes under a pods directory.
#[derive(Debug, Clone)]
pub struct VolumeManager {
    pods_dir: PathBuf,
    node_allocatable: Option<NodeResources>,
}

/// A file to write into an atomically written volume.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileProjection {
    data: Vec<u8>,
    mode: u32,
}

/// Relative file path → contents.
type Payload = BTreeMap<String, FileProjection>;

/// What to do on disk for one volume, computed from the pod and its sources.
#[derive(Debug)]
enum Plan {
    EmptyDir {
        dir: PathBuf,
        tmpfs_size: Option<Option<u64>>,
        mode: u32,
    },
    HostPath {
        path: PathBuf,
        type_: String,
    },
    Atomic {
        dir: PathBuf,
        tmpfs: bool,
        payload: Payload,
    },
}

impl VolumeManager {
    /// A manager for pods under `pods_dir` (the agent passes `<data-dir>/pods`).
    pub fn new(pods_dir: PathBuf) -> Self {
        Self {
            pods_dir,
            node_allocatable: None,
        }
    }

    /// Sets the node's allocatable resources, which downward-API `resourceFieldRef` items use
    /// for missing limits. Without it such an item fails when the limit is missing.
    pub fn with_node_allocatable(mut self, allocatable: NodeResources) -> Self {
        self.node_allocatable = Some(allocatable);
        self
    }

    /// The pods directory.
    pub fn pods_dir(&self) -> &Path {
        &self.pods_dir
    }

    /// `<pods_dir>/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    /// Makes every volume of `pod` and returns where they are. Idempotent: volumes that exist
    /// already are reused (and their contents refreshed when their source changed).
    pub async fn setup(
        &self,
        pod: &Pod,
        source: &dyn ObjectSource,
    ) -> Result<PodVolumes, VolumeError> {
        let uid = pod_uid(pod)?;
        let mut volumes = BTreeMap::new();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let (kind, plan) = self.plan(pod, &uid, volume, source).await?;
            let host_path = match &plan {
                Plan::EmptyDir { dir, .. } | Plan::Atomic { dir, .. } => dir.clone(),
                Plan::HostPath { path, .. } => path.clone(),
            };
            apply_blocking(volume.name.clone(), plan).await?;
            volumes.insert(
                volume.name.clone(),
                PodVolume {
                    host_path,
                    kind,
                    read_only: kind.is_read_only(),
                },
            );
        }
        Ok(PodVolumes { volumes })
    }

    /// Rewrites the configMap, secret, downward-API and projected volumes of `pod` whose
    /// contents changed, each atomically, and returns the names of the volumes it rewrote.
    /// Every such volume is tried; the first error is returned after the others are done.
    pub async fn update(
        &self,
        pod: &Pod,
        source: &dyn ObjectSource,
    ) -> Result<Vec<String>, VolumeError> {
        let uid = pod_uid(pod)?;
        let mut changed = Vec::new();
        let mut first_error = None;
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let updatable = volume.config_map.is_some()
                || volume.secret.is_some()
                || volume.downward_api.is_some()
                || volume.projected.is_some();
            if !updatable {
                continue;
            }
            let result = match self.plan(pod, &uid, volume, source).await {
                Ok((_, plan)) => apply_blocking(volume.name.clone(), plan).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(true) => changed.push(volume.name.clone()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(volume = %volume.name, error = %e, "failed to update volume");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// Unmounts everything mounted under `<pods_dir>/<uid>` (tmpfs volumes, and anything else
    /// found in `/proc/self/mountinfo`), deepest first, then removes the directory. Succeeds
    /// when the directory is already gone.
    pub fn teardown(&self, uid: &str) -> Result<(), VolumeError> {
        check_name(uid, uid)?;
        let pod_dir = self.pod_dir(uid);
        match std::fs::symlink_metadata(&pod_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(VolumeError::Io {
                    volume: uid.to_owned(),
                    op: "stat",
                    path: pod_dir,
                    source,
                });
            }
            Ok(_) => {}
        }
        let canonical = std::fs::canonicalize(&pod_dir).map_err(|source| VolumeError::Io {
            volume: uid.to_owned(),
            op: "resolve",
            path: pod_dir.clone(),
            source,
        })?;
        // Mounts can be stacked; a few rounds take them all off.
        for _ in 0..8 {
            let mut under = mounts_under(&canonical, uid)?;
            if under.is_empty() {
                break;
            }
            under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for point in under {
                match nix::mount::umount2(&point, MntFlags::empty()) {
                    Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
                    Err(nix::Error::EBUSY) => {
                        tracing::warn!(path = %point.display(), "mount busy, detaching it");
                        nix::mount::umount2(&point, MntFlags::MNT_DETACH).map_err(|source| {
                            VolumeError::Unmount {
                                path: point.clone(),
                                source,
                            }
                        })?;
                    }
                    Err(source) => {
                        return Err(VolumeError::Unmount {
                            path: point,
                            source,
                        });
                    }
                }
            }
        }
        if let Some(path) = mounts_under(&canonical, uid)?.into_iter().next() {
            return Err(VolumeError::StillMounted { path });
        }
        match std::fs::remove_dir_all(&pod_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(VolumeError::Io {
                volume: uid.to_owned(),
                op: "remove",
                path: pod_dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// The uids of the pod directories under the pods directory (empty when it does not
    /// exist), to re-adopt running pods after a restart or tear down orphans.
    pub fn list_pod_dirs(&self) -> Result<Vec<String>, VolumeError> {
        let entries = match std::fs::read_dir(&self.pods_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other,
        };
        let io_err = |source| VolumeError::Io {
            volume: String::new(),
            op: "list",
            path: self.pods_dir.clone(),
            source,
        };
        let mut uids = Vec::new();
        for entry in entries.map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            if entry.file_type().map_err(io_err)?.is_dir()
                && let Ok(name) = entry.file_name().into_string()
            {
                uids.push(name);
            }
        }
        uids.sort();
        Ok(uids)
    }

    /// The directory of volume `name` of plugin `plugin` for pod `uid`.
    fn volume_dir(&self, uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.pods_dir
            .join(uid)
            .join("volumes")
            .join(plugin)
            .join(name)
    }

    /// Works out what `volume` needs on disk, reading its sources.
    async fn plan(
        &self,
        pod: &Pod,
        uid: &str,
        volume: &Volume,
        source: &dyn ObjectSource,
    ) -> Result<(VolumeKind, Plan), VolumeError> {
        let name = volume.name.as_str();
        check_name(name, name)?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(ed) = &volume.empty_dir {
            let tmpfs_size = match ed.medium.as_deref().unwrap_or("") {
                "" => None,
                "Memory" => {
                    let size = match &ed.size_limit {
                        Some(q) => Some(
                            Quantity::parse(&q.0)
                                .map_err(|source| VolumeError::SizeLimit {
                                    volume: name.to_owned(),
                                    source,
                                })?
                                .value(),
                        )
                        .filter(|s| *s > 0),
                        None => None,
                    };
                    Some(size)
                }
                other => {
                    return Err(VolumeError::Unsupported {
                        volume: name.to_owned(),
                        what: format!("emptyDir medium {other:?}"),
                    });
                }
            };
            let mode = ed.mode.map_or(EMPTY_DIR_MODE, file_mode);
            let dir = self.volume_dir(uid, EMPTY_DIR_PLUGIN, name);
            return Ok((
                VolumeKind::EmptyDir,
                Plan::EmptyDir {
                    dir,
                    tmpfs_size,
                    mode,
                },
            ));
        }
        if let Some(hp) = &volume.host_path {
            return Ok((
                VolumeKind::HostPath,
                Plan::HostPath {
                    path: PathBuf::from(&hp.path),
                    type_: hp.type_.clone().unwrap_or_default(),
                },
            ));
        }
        if let Some(cm) = &volume.config_map {
            let default_mode = cm.default_mode.map_or(DEFAULT_FILE_MODE, file_mode);
            let optional = cm.optional == Some(true);
            let payload = config_map_payload(
                name,
                namespace,
                &cm.name,
                cm.items.as_deref(),
                default_mode,
                optional,
                source,
            )
            .await?;
            let dir = self.volume_dir(uid, CONFIG_MAP_PLUGIN, name);
            return Ok((
                VolumeKind::ConfigMap,
                Plan::Atomic {
                    dir,
                    tmpfs: false,
                    payload,
                },
            ));
        }
        if let Some(s) = &volume.secret {
            let default_mode = s.default_mode.map_or(DEFAULT_FILE_MODE, file_mode);
            let optional = s.optional == Some(true);
            let secret_name = s.secret_name.as_deref().unwrap_or("");
            let payload = secret_payload(
                name,
                namespace,
                secret_name,
                s.items.as_deref(),
                default_mode,
                optional,
                source,
            )
            .await?;
            let dir = self.volume_dir(uid, SECRET_PLUGIN, name);
            return Ok((
                VolumeKind::Secret,
                Plan::Atomic {
                    dir,
                    tmpfs: true,
                    payload,
                },
            ));
        }
        if let Some(d) = &volume.downward_api {
            let default_mode = d.default_mode.map_or(DEFAULT_FILE_MODE, file_mode);
            let mut payload = Payload::new();
            self.downward_payload(name, pod, d.items.as_deref(), default_mode, &mut payload)?;
            let dir = self.volume_dir(uid, DOWNWARD_API_PLUGIN, name);
            return Ok((
                VolumeKind::DownwardApi,
                Plan::Atomic {
                    dir,
                    tmpfs: true,
                    payload,
                },
            ));
        }
        if let Some(p) = &volume.projected {
            let default_mode = p.default_mode.map_or(DEFAULT_FILE_MODE, file_mode);
            let mut payload = Payload::new();
            for projection in p.sources.iter().flatten() {
                if let Some(cm) = &projection.config_map {
                    let optional = cm.optional == Some(true);
                    payload.extend(
                        config_map_payload(
                            name,
                            namespace,
                            &cm.name,
                            cm.items.as_deref(),
                            default_mode,
                            optional,
                            source,
                        )
                        .await?,
                    );
                } else if let Some(s) = &projection.secret {
                    let optional = s.optional == Some(true);
                    payload.extend(
                        secret_payload(
                            name,
                            namespace,
                            &s.name,
                            s.items.as_deref(),
                            default_mode,
                            optional,
                            source,
                        )
                        .await?,
                    );
                } else if let Some(d) = &projection.downward_api {
                    self.downward_payload(
                        name,
                        pod,
                        d.items.as_deref(),
                        default_mode,
                        &mut payload,
                    )?;
                } else {
                    let what = if projection.service_account_token.is_some() {
                        "projected serviceAccountToken (no TokenRequest support)"
                    } else if projection.cluster_trust_bundle.is_some() {
                        "projected clusterTrustBundle"
                    } else if projection.pod_certificate.is_some() {
                        "projected podCertificate"
                    } else {
                        "an empty projection"
                    };
                    return Err(VolumeError::Unsupported {
                        volume: name.to_owned(),
                        what: what.to_owned(),
                    });
                }
            }
            let dir = self.volume_dir(uid, PROJECTED_PLUGIN, name);
            return Ok((
                VolumeKind::Projected,
                Plan::Atomic {
                    dir,
                    tmpfs: true,
                    payload,
                },
            ));
        }
        Err(VolumeError::Unsupported {
            volume: name.to_owned(),
            what: "this volume type".to_owned(),
        })
    }

    /// Adds the downward-API `items` to `payload` (kubelet's `downwardapi.CollectData`).
    fn downward_payload(
        &self,
        volume: &str,
        pod: &Pod,
        items: Option<&[DownwardAPIVolumeFile]>,
        default_mode: u32,
        payload: &mut Payload,
    ) -> Result<(), VolumeError> {
        for item in items.into_iter().flatten() {
            let err = |source| VolumeError::DownwardApi {
                volume: volume.to_owned(),
                path: item.path.clone(),
                source: Box::new(source),
            };
            let value = if let Some(field) = &item.field_ref {
                env::pod_metadata_field(pod, &field.field_path).map_err(err)?
            } else if let Some(res) = &item.resource_field_ref {
                let container_name = res.container_name.as_deref().unwrap_or("");
                let container = env::find_container(pod, container_name)
                    .ok_or_else(|| err(EnvError::ContainerNotFound(container_name.to_owned())))?;
                let allocatable = self.node_allocatable.unwrap_or_default();
                let limit_missing = res.resource.starts_with("limits.")
                    && self.node_allocatable.is_none()
                    && container
                        .resources
                        .as_ref()
                        .and_then(|r| r.limits.as_ref())
                        .and_then(|l| l.get(res.resource.trim_start_matches("limits.")))
                        .is_none();
                if limit_missing {
                    return Err(VolumeError::Unsupported {
                        volume: volume.to_owned(),
                        what: format!(
                            "{} without a limit when node allocatable is unknown",
                            res.resource
                        ),
                    });
                }
                env::container_resource(res, container, &allocatable).map_err(err)?
            } else {
                String::new()
            };
            let mode = item.mode.map_or(default_mode, file_mode);
            payload.insert(
                item.path.clone(),
                FileProjection {
                    data: value.into_bytes(),
                    mode,
                },
            );
        }
        Ok(())
    }
}

/// The pod's uid, which names its directory.
fn pod_uid(pod: &Pod) -> Result<String, VolumeError> {
    let uid = pod
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| VolumeError::MissingUid(pod.metadata.name.clone().unwrap_or_default()))?;
    check_name(&uid, &uid)?;
    Ok(uid)
}

/// Rejects names that would not be a single path component (volume names, pod uids).
fn check_name(volume: &str, name: &str) -> Result<(), VolumeError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.contains('/') || name.contains('\0') {
        "contains a path separator"
    } else if name == "." || name == ".." {
        "is a relative directory"
    } else {
        return Ok(());
    };
    Err(VolumeError::InvalidPath {
        volume: volume.to_owned(),
        path: name.to_owned(),
        reason,
    })
}

/// A pod-given file mode, restricted to permission bits.
fn file_mode(mode: i32) -> u32 {
    u32::try_from(mode).unwrap_or(DEFAULT_FILE_MODE) & 0o777
}

/// Files for `items` (or every key when there are none) of a ConfigMap/Secret's `data` (kubelet's
/// `MakePayload`). A missing key is an error unless the reference is optional.
fn make_payload(
    volume: &str,
    kind: &'static str,
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, VolumeError> {
    let mut payload = Payload::new();
    match items {
        None | Some([]) => {
            for (key, value) in data {
                payload.insert(
                    key.clone(),
                    FileProjection {
                        data: value.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(VolumeError::MissingKey {
                        volume: volume.to_owned(),
                        kind,
                        name: name.to_owned(),
                        key: item.key.clone(),
                    });
                };
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: value.clone(),
                        mode: item.mode.map_or(default_mode, file_mode),
                    },
                );
            }
        }
    }
    Ok(payload)
}

/// The payload of a ConfigMap reference (`data` and `binaryData`).
async fn config_map_payload(
    volume: &str,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
    source: &dyn ObjectSource,
) -> Result<Payload, VolumeError> {
    let cm: Option<ConfigMap> =
        source
            .config_map(namespace, name)
            .await
            .map_err(|source| VolumeError::Source {
                volume: volume.to_owned(),
                source,
            })?;
    let Some(cm) = cm else {
        if optional {
            return Ok(Payload::new());
        }
        return Err(VolumeError::ConfigMapNotFound {
            volume: volume.to_owned(),
            name: name.to_owned(),
        });
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        data.entry(k).or_insert(v.0);
    }
    make_payload(
        volume,
        "configmap",
        name,
        &data,
        items,
        default_mode,
        optional,
    )
}

/// The payload of a Secret reference (decoded `data`, plus any unconverted `stringData`).
async fn secret_payload(
    volume: &str,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
    source: &dyn ObjectSource,
) -> Result<Payload, VolumeError> {
    let secret: Option<Secret> =
        source
            .secret(namespace, name)
            .await
            .map_err(|source| VolumeError::Source {
                volume: volume.to_owned(),
                source,
            })?;
    let Some(secret) = secret else {
        if optional {
            return Ok(Payload::new());
        }
        return Err(VolumeError::SecretNotFound {
            volume: volume.to_owned(),
            name: name.to_owned(),
        });
    };
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    make_payload(volume, "secret", name, &data, items, default_mode, optional)
}

/// Runs [`apply`] on the blocking pool.
async fn apply_blocking(volume: String, plan: Plan) -> Result<bool, VolumeError> {
    let name = volume.clone();
    tokio::task::spawn_blocking(move || apply(&name, plan))
        .await
        .map_err(|source| VolumeError::Task { volume, source })?
}

/// Makes one volume on disk; returns whether its contents changed.
fn apply(volume: &str, plan: Plan) -> Result<bool, VolumeError> {
    let io_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| VolumeError::Io {
            volume: volume.to_owned(),
            op,
            path,
            source,
        }
    };
    match plan {
        Plan::EmptyDir {
            dir,
            tmpfs_size,
            mode,
        } => {
            std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            if let Some(size) = tmpfs_size {
                ensure_tmpfs(volume, &dir, size)?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", &dir))?;
            Ok(false)
        }
        Plan::HostPath { path, type_ } => {
            check_host_path(volume, &path, &type_)?;
            Ok(false)
        }
        Plan::Atomic {
            dir,
            tmpfs,
            payload,
        } => {
            std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            if tmpfs {
                ensure_tmpfs(volume, &dir, None)?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err("chmod", &dir))?;
            atomic_write(volume, &dir, &payload)
        }
    }
}

/// kubelet's hostPath `type` checks; the `OrCreate` types create what is missing.
fn check_host_path(volume: &str, path: &Path, type_: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::FileTypeExt;
    let invalid = || VolumeError::InvalidHostPath {
        volume: volume.to_owned(),
        path: path.to_owned(),
        type_: type_.to_owned(),
    };
    if !path.is_absolute() {
        return Err(invalid());
    }
    let wrong = |expected| VolumeError::HostPathType {
        volume: volume.to_owned(),
        path: path.to_owned(),
        expected,
    };
    let io_err = |op, source| VolumeError::Io {
        volume: volume.to_owned(),
        op,
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("stat", e)),
    };
    let (expected, check): (&str, fn(&std::fs::FileType) -> bool) = match type_ {
        "" => return Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_none() {
                std::fs::create_dir_all(path).map_err(|e| io_err("create", e))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| io_err("chmod", e))?;
                return Ok(());
            }
            ("directory", |t| t.is_dir())
        }
        "FileOrCreate" => {
            if meta.is_none() {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| io_err("create", e))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| io_err("chmod", e))?;
                return Ok(());
            }
            ("file", |t| t.is_file())
        }
        "Directory" => ("directory", |t| t.is_dir()),
        "File" => ("file", |t| t.is_file()),
        "Socket" => ("socket file", |t| t.is_socket()),
        "CharDevice" => ("character device", |t| t.is_char_device()),
        "BlockDevice" => ("block device", |t| t.is_block_device()),
        _ => return Err(invalid()),
    };
    match meta {
        Some(m) if check(&m.file_type()) => Ok(()),
        _ => Err(wrong(expected)),
    }
}

/// Mounts a tmpfs on `dir` unless something is mounted there already.
fn ensure_tmpfs(volume: &str, dir: &Path, size: Option<u64>) -> Result<(), VolumeError> {
    let canonical = std::fs::canonicalize(dir).map_err(|source| VolumeError::Io {
        volume: volume.to_owned(),
        op: "resolve",
        path: dir.to_owned(),
        source,
    })?;
    let mounted = mount_points()
        .map_err(|source| VolumeError::Io {
            volume: volume.to_owned(),
            op: "read mounts for",
            path: dir.to_owned(),
            source,
        })?
        .contains(&canonical);
    if mounted {
        return Ok(());
    }
    let data = size.map(|s| format!("size={s}"));
    nix::mount::mount(
        Some("tmpfs"),
        &canonical,
        Some("tmpfs"),
        MsFlags::empty(),
        data.as_deref(),
    )
    .map_err(|source| VolumeError::Mount {
        volume: volume.to_owned(),
        path: canonical,
        source,
    })
}

/// The mount points in `/proc/self/mountinfo`, unescaped.
fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` (already canonical).
fn mounts_under(dir: &Path, uid: &str) -> Result<Vec<PathBuf>, VolumeError> {
    Ok(mount_points()
        .map_err(|source| VolumeError::Io {
            volume: uid.to_owned(),
            op: "read mounts for",
            path: dir.to_owned(),
            source,
        })?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// Checks a payload path as kubelet's `AtomicWriter.validatePath` does and returns it cleaned.
fn clean_payload_path(volume: &str, path: &str) -> Result<String, VolumeError> {
    let invalid = |reason| VolumeError::InvalidPath {
        volume: volume.to_owned(),
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("empty"));
    }
    if path.starts_with('/') {
        return Err(invalid("absolute"));
    }
    if path.len() > 4096 {
        return Err(invalid("longer than 4096 bytes"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("contains '..'")),
            p if p.len() > 255 => return Err(invalid("has a segment longer than 255 bytes")),
            p => parts.push(p),
        }
    }
    let cleaned = parts.join("/");
    if cleaned.is_empty() {
        return Err(invalid("empty"));
    }
    if cleaned.starts_with("..") {
        return Err(invalid("starts with '..'"));
    }
    Ok(cleaned)
}

/// The files below `dir`, as relative paths with contents and mode.
fn read_tree(dir: &Path, prefix: &str, out: &mut Payload) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            read_tree(&entry.path(), &rel, out)?;
        } else if meta.is_file() {
            out.insert(
                rel,
                FileProjection {
                    data: std::fs::read(entry.path())?,
                    mode: meta.permissions().mode() & 0o777,
                },
            );
        }
    }
    Ok(())
}

/// The first component of each path.
fn top_level(payload: &Payload) -> BTreeSet<String> {
    payload
        .keys()
        .filter_map(|p| p.split('/').next())
        .map(str::to_owned)
        .collect()
}

/// Writes `payload` into `dir` as kubelet's `AtomicWriter` does; returns whether anything changed.
fn atomic_write(volume: &str, dir: &Path, payload: &Payload) -> Result<bool, VolumeError> {
    let io_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| VolumeError::Io {
            volume: volume.to_owned(),
            op,
            path,
            source,
        }
    };
    let mut clean = Payload::new();
    for (path, file) in payload {
        clean.insert(clean_payload_path(volume, path)?, file.clone());
    }

    let data_link = dir.join(DATA_LINK);
    let old_ts = match std::fs::read_link(&data_link) {
        Ok(target) => Some(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read link", &data_link)(e)),
    };
    let mut current = Payload::new();
    if let Some(old) = &old_ts {
        let old_dir = dir.join(old);
        match read_tree(&old_dir, "", &mut current) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => current.clear(),
            Err(e) => return Err(io_err("read", &old_dir)(e)),
        }
    }
    let new_top = top_level(&clean);
    if old_ts.is_some() && current == clean {
        create_user_visible(volume, dir, &new_top)?;
        return Ok(false);
    }

    // A fresh timestamped directory with the new contents.
    let now = jiff::Timestamp::now();
    let stamp = now.strftime("..%Y_%m_%d_%H_%M_%S").to_string();
    let mut attempt = 0u32;
    let (ts_name, ts_dir) = loop {
        let name = format!("{stamp}.{:09}{attempt}", now.subsec_nanosecond());
        let path = dir.join(&name);
        match std::fs::create_dir(&path) {
            Ok(()) => break (name, path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
            Err(e) => return Err(io_err("create", &path)(e)),
        }
    };
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", &ts_dir))?;
    for (rel, file) in &clean {
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent()
            && parent != ts_dir
        {
            std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        std::fs::write(&path, &file.data).map_err(io_err("write", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
            .map_err(io_err("chmod", &path))?;
    }

    // Swap `..data` in one rename.
    let tmp_link = dir.join(DATA_LINK_TMP);
    match std::fs::remove_file(&tmp_link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("remove", &tmp_link)(e));
        }
        _ => {}
    }
    std::os::unix::fs::symlink(&ts_name, &tmp_link).map_err(io_err("symlink", &tmp_link))?;
    std::fs::rename(&tmp_link, &data_link).map_err(io_err("rename", &data_link))?;

    create_user_visible(volume, dir, &new_top)?;
    for old_name in top_level(&current).difference(&new_top) {
        let path = dir.join(old_name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &path)(e));
            }
            _ => {}
        }
    }
    // Remove the previous timestamped directory and any left by an interrupted write.
    let entries = std::fs::read_dir(dir).map_err(io_err("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") && name != DATA_LINK && name != ts_name {
            let path = entry.path();
            let result = if std::fs::symlink_metadata(&path)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = result
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(io_err("remove", &path)(e));
            }
        }
    }
    Ok(true)
}

/// Makes the `name -> ..data/name` symlinks that are missing.
fn create_user_visible(
    volume: &str,
    dir: &Path,
    names: &BTreeSet<String>,
) -> Result<(), VolumeError> {
    for name in names {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &path).map_err(
                |source| VolumeError::Io {
                    volume: volume.to_owned(),
                    op: "symlink",
                    path: path.clone(),
                    source,
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::MetadataExt;

    use serde_json::json;

    use super::super::env::tests::FakeSource;
    use super::*;

    const UID: &str = "0d1c2b3a-uid";

    /// Tears the pod down even when an assertion fails, so no tmpfs is left mounted.
    struct Fixture {
        _tmp: tempfile::TempDir,
        manager: VolumeManager,
        source: FakeSource,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = self.manager.teardown(UID);
        }
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let manager =
            VolumeManager::new(tmp.path().join("pods")).with_node_allocatable(NodeResources {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
                ephemeral_bytes: 1 << 34,
            });
        let source = FakeSource::default();
        source.add_config_map(
            "ns",
            json!({"metadata": {"name": "cfg"}, "data": {"a.conf": "alpha", "b.conf": "beta"},
                   "binaryData": {"bin": "AAEC"}}),
        );
        // "/w==" is base64 for the single byte 0xff (not UTF-8).
        source.add_secret(
            "ns",
            json!({"metadata": {"name": "sec"}, "data": {"token": "c2VjcmV0", "raw": "/w=="}}),
        );
        Fixture {
            _tmp: tmp,
            manager,
            source,
        }
    }

    fn pod(volumes: serde_json::Value, containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": UID,
                         "labels": {"app": "web"}, "annotations": {"a": "1"}},
            "spec": {"volumes": volumes, "containers": containers}
        }))
        .unwrap()
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn is_mounted(path: &Path) -> bool {
        let canonical = std::fs::canonicalize(path).unwrap();
        mount_points().unwrap().contains(&canonical)
    }

    fn data_target(dir: &Path) -> PathBuf {
        std::fs::read_link(dir.join(DATA_LINK)).unwrap()
    }

    #[tokio::test]
    async fn empty_dir_on_disk() {
        let f = fixture();
        let p = pod(json!([{"name": "scratch", "emptyDir": {}}]), json!([]));
        let vols = f.manager.setup(&p, &f.source).await.unwrap();
        let v = vols.get("scratch").unwrap();
        let want = f
            .manager
            .pods_dir()
            .join(UID)
            .join("volumes/kubernetes.io~empty-dir/scratch");
        assert_eq!(v.host_path, want);
        assert_eq!(v.kind, VolumeKind::EmptyDir);
        assert!(!v.read_only);
        assert!(want.is_dir());
        assert_eq!(mode_of(&want), 0o777);
        assert!(!is_mounted(&want));
        // Setting up again keeps what is there.
        std::fs::write(want.join("keep"), "x").unwrap();
        let again = f.manager.setup(&p, &f.source).await.unwrap();
        assert_eq!(again, vols);
        assert!(want.join("keep").exists());
    }

    #[tokio::test]
    async fn memory_empty_dir_is_a_sized_tmpfs_and_teardown_unmounts_it() {
        let f = fixture();
        let p = pod(
            json!([{"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "2Mi"}}]),
            json!([]),
        );
        let vols = f.manager.setup(&p, &f.source).await.unwrap();
        let dir = vols.get("mem").unwrap().host_path.clone();
        assert!(is_mounted(&dir));
        let st = nix::sys::statvfs::statvfs(&dir).unwrap();
        assert_eq!(st.blocks() * st.fragment_size(), 2 << 20);
        assert_eq!(mode_of(&dir), 0o777);
        // A second setup does not stack another tmpfs.
        f.manager.setup(&p, &f.source).await.unwrap();
        let canonical = std::fs::canonicalize(&dir).unwrap();
        let count = mount_points()
            .unwrap()
            .iter()
            .filter(|m| **m == canonical)
            .count();
        assert_eq!(count, 1);

        assert_eq!(f.manager.list_pod_dirs().unwrap(), [UID]);
        f.manager.teardown(UID).unwrap();
        assert!(!mount_points().unwrap().contains(&canonical));
        assert!(!f.manager.pod_dir(UID).exists());
        // Idempotent.
        f.manager.teardown(UID).unwrap();
        assert!(f.manager.list_pod_dirs().unwrap().is_empty());
    }

    #[tokio::test]
    async fn host_path_types() {
        let f = fixture();
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        std::fs::write(h.join("file"), "x").unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(h.join("sock")).unwrap();
        let case = |path: PathBuf, type_: &str| {
            pod(
                json!([{"name": "hp", "hostPath": {"path": path, "type": type_}}]),
                json!([]),
            )
        };
        let ok = [
            (h.join("new/dir"), "DirectoryOrCreate"),
            (h.join("new/dir"), "Directory"),
            (h.join("made"), "FileOrCreate"),
            (h.join("file"), "File"),
            (h.join("file"), "FileOrCreate"),
            (h.join("sock"), "Socket"),
            (PathBuf::from("/dev/null"), "CharDevice"),
            (h.join("anything"), ""),
        ];
        for (path, type_) in ok {
            let vols = f.manager.setup(&case(path.clone(), type_), &f.source).await;
            let vols = vols.unwrap_or_else(|e| panic!("{type_} {}: {e}", path.display()));
            assert_eq!(vols.get("hp").unwrap().host_path, path);
            assert!(!vols.get("hp").unwrap().read_only);
        }
        assert!(h.join("new/dir").is_dir());
        assert!(h.join("made").is_file());

        let bad = [
            (h.join("missing"), "Directory", "is not a directory"),
            (h.join("file"), "Directory", "is not a directory"),
            (h.join("new"), "File", "is not a file"),
            (h.join("new"), "FileOrCreate", "is not a file"),
            (h.join("file"), "DirectoryOrCreate", "is not a directory"),
            (h.join("file"), "Socket", "is not a socket file"),
            (h.join("file"), "CharDevice", "is not a character device"),
            (
                PathBuf::from("/dev/null"),
                "BlockDevice",
                "is not a block device",
            ),
        ];
        for (path, type_, message) in bad {
            let err = f
                .manager
                .setup(&case(path.clone(), type_), &f.source)
                .await
                .unwrap_err();
            assert!(
                matches!(err, VolumeError::HostPathType { .. }),
                "{type_}: {err}"
            );
            assert!(err.to_string().contains(message), "{err}");
            assert!(err.to_string().contains("volume hp"), "{err}");
        }
        let err = f
            .manager
            .setup(&case(h.join("x"), "Weird"), &f.source)
            .await
            .unwrap_err();
        assert!(matches!(err, VolumeError::InvalidHostPath { .. }), "{err}");
    }

    #[tokio::test]
    async fn config_map_all_keys_atomic_layout() {
        let f = fixture();
        let p = pod(
            json!([{"name": "conf", "configMap": {"name": "cfg"}}]),
            json!([]),
        );
        let vols = f.manager.setup(&p, &f.source).await.unwrap();
        let v = vols.get("conf").unwrap();
        assert!(v.read_only);
        assert!(
            v.host_path
                .ends_with("volumes/kubernetes.io~configmap/conf")
        );
        let dir = &v.host_path;
        assert!(!is_mounted(dir));
        let ts = data_target(dir);
        assert!(ts.to_string_lossy().starts_with("..20"), "{ts:?}");
        for name in ["a.conf", "b.conf", "bin"] {
            assert_eq!(
                std::fs::read_link(dir.join(name)).unwrap(),
                Path::new("..data").join(name)
            );
            assert_eq!(mode_of(&dir.join(name)), 0o644);
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("a.conf")).unwrap(),
            "alpha"
        );
        assert_eq!(std::fs::read(dir.join("bin")).unwrap(), [0, 1, 2]);
    }

    #[tokio::test]
    async fn config_map_items_modes_and_optional() {
        let f = fixture();
        let p = pod(
            json!([
                {"name": "items", "configMap": {"name": "cfg", "defaultMode": 0o600, "items": [
                    {"key": "a.conf", "path": "etc/app/a.conf"},
                    {"key": "b.conf", "path": "b", "mode": 0o755}
                ]}},
                {"name": "opt", "configMap": {"name": "nope", "optional": true}},
                {"name": "optkey", "configMap": {"name": "cfg", "optional": true, "items": [
                    {"key": "missing", "path": "m"}, {"key": "a.conf", "path": "a"}
                ]}}
            ]),
            json!([]),
        );
        let vols = f.manager.setup(&p, &f.source).await.unwrap();
        let dir = &vols.get("items").unwrap().host_path;
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/app/a.conf")).unwrap(),
            "alpha"
        );
        assert_eq!(
            std::fs::read_link(dir.join("etc")).unwrap(),
            Path::new("..data/etc")
        );
        assert_eq!(mode_of(&dir.join("etc/app/a.conf")), 0o600);
        assert_eq!(mode_of(&dir.join("b")), 0o755);
        assert!(!dir.join("a.conf").exists());

        let opt = &vols.get("opt").unwrap().host_path;
        let names: Vec<_> = std::fs::read_dir(opt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with(".."))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        assert!(opt.join(DATA_LINK).exists());

        let optkey = &vols.get("optkey").unwrap().host_path;
        assert!(optkey.join("a").exists());
        assert!(!optkey.join("m").exists());

        for (volumes, message) in [
            (
                json!([{"name": "v", "configMap": {"name": "nope"}}]),
                "volume v: configmap \"nope\" not found",
            ),
            (
                json!([{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "k"}]}}]),
                "volume v: configmap cfg references non-existent key: k",
            ),
            (
                json!([{"name": "v", "secret": {"secretName": "nope"}}]),
                "volume v: secret \"nope\" not found",
            ),
            (
                json!([{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "a.conf", "path": "../x"}]}}]),
                "volume v: invalid path \"../x\": contains '..'",
            ),
            (
                json!([{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}]),
                "volume v: this volume type is not supported",
            ),
        ] {
            let err = f
                .manager
                .setup(&pod(volumes, json!([])), &f.source)
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }

    #[tokio::test]
    async fn secret_is_decoded_on_tmpfs() {
        let f = fixture();
        let p = pod(
            json!([{"name": "creds", "secret": {"secretName": "sec", "defaultMode": 0o400}}]),
            json!([]),
        );
        let vols = f.manager.setup(&p, &f.source).await.unwrap();
        let v = vols.get("creds").unwrap();
        assert_eq!(v.kind, VolumeKind::Secret);
        assert!(v.read_only);
        assert!(v.host_path.ends_with("volumes/kubernetes.io~secret/creds"));
        assert!(is_mounted(&v.host_path));
        assert_eq!(std::fs::read(v.host_path.join("token")).unwrap(), b"secret");
        assert_eq!(std::fs::read(v.host_path.join("raw")).unwrap(), [0xff]);
        assert_eq!(mode_of(&v.host_path.join("token")), 0o400);
        f.manager.teardown(UID).unwrap();
        assert!(!f.manager.pod_dir(UID).exists());
    }

    #[tokio::test]
    async fn downward_api_and_projected() {
        let f = fixture();
        let p = pod(
            json!([
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o600},
                    {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}
                ]}},
                {"name": "all", "projected": {"defaultMode": 0o640, "sources": [
                    {"configMap": {"name": "cfg", "items": [{"key": "a.conf", "path": "a.conf"}]}},
                    {"secret": {"name": "sec", "items": [{"key": "token", "path": "secret/token", "mode": 0o400}]}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                    {"configMap": {"name": "absent", "optional": true}}
                ]}}
            ]),
            json!([{"name": "c", "resources": {"limits": {"cpu": "250m"}}}]),
        );
        let vols = f.manager.setup(&p, &f.source).await.unwrap();
        let info = vols.get("info").unwrap();
        assert_eq!(info.kind, VolumeKind::DownwardApi);
        assert!(
            info.host_path
                .ends_with("volumes/kubernetes.io~downward-api/info")
        );
        assert!(is_mounted(&info.host_path));
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(info.host_path.join("labels")), "app=\"web\"");
        assert_eq!(read(info.host_path.join("name")), "p");
        assert_eq!(mode_of(&info.host_path.join("name")), 0o600);
        assert_eq!(mode_of(&info.host_path.join("labels")), 0o644);
        assert_eq!(read(info.host_path.join("cpu")), "250");
        // No memory limit: node allocatable (1 GiB).
        assert_eq!(read(info.host_path.join("mem")), "1024");

        let all = vols.get("all").unwrap();
        assert_eq!(all.kind, VolumeKind::Projected);
        assert!(
            all.host_path
                .ends_with("volumes/kubernetes.io~projected/all")
        );
        assert!(is_mounted(&all.host_path));
        assert_eq!(read(all.host_path.join("a.conf")), "alpha");
        assert_eq!(mode_of(&all.host_path.join("a.conf")), 0o640);
        assert_eq!(read(all.host_path.join("secret/token")), "secret");
        assert_eq!(mode_of(&all.host_path.join("secret/token")), 0o400);
        assert_eq!(read(all.host_path.join("ns")), "ns");

        let token = pod(
            json!([{"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
            ]}}]),
            json!([]),
        );
        let err = f.manager.setup(&token, &f.source).await.unwrap_err();
        assert!(matches!(err, VolumeError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("serviceAccountToken"), "{err}");
    }

    #[tokio::test]
    async fn update_swaps_data_atomically() {
        let f = fixture();
        let p = pod(
            json!([
                {"name": "conf", "configMap": {"name": "cfg"}},
                {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "scratch", "emptyDir": {}}
            ]),
            json!([]),
        );
        let vols = f.manager.setup(&p, &f.source).await.unwrap();
        let dir = vols.get("conf").unwrap().host_path.clone();
        let old = data_target(&dir);

        // Nothing changed: nothing rewritten.
        assert!(f.manager.update(&p, &f.source).await.unwrap().is_empty());
        assert_eq!(data_target(&dir), old);

        f.source.add_config_map(
            "ns",
            json!({"metadata": {"name": "cfg"}, "data": {"a.conf": "ALPHA", "c.conf": "new"}}),
        );
        assert_eq!(f.manager.update(&p, &f.source).await.unwrap(), ["conf"]);
        let new = data_target(&dir);
        assert_ne!(new, old);
        assert!(
            !dir.join(&old).exists(),
            "old timestamp dir must be removed"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("a.conf")).unwrap(),
            "ALPHA"
        );
        assert_eq!(std::fs::read_to_string(dir.join("c.conf")).unwrap(), "new");
        // Keys that went away lose their user-visible link.
        assert!(std::fs::symlink_metadata(dir.join("b.conf")).is_err());
        assert!(std::fs::symlink_metadata(dir.join("bin")).is_err());
        let entries: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let want: BTreeSet<String> = ["..data", "a.conf", "c.conf"]
            .into_iter()
            .map(String::from)
            .chain([new.to_string_lossy().into_owned()])
            .collect();
        assert_eq!(entries, want);

        // A label or name change reaches downward-API volumes too.
        let mut renamed = p.clone();
        renamed.metadata.name = Some("q".into());
        assert_eq!(
            f.manager.update(&renamed, &f.source).await.unwrap(),
            ["info"]
        );
        let info = &vols.get("info").unwrap().host_path;
        assert_eq!(std::fs::read_to_string(info.join("name")).unwrap(), "q");

        // A source that disappears is an error, and the old contents stay.
        f.source.config_maps.lock().unwrap().clear();
        assert!(f.manager.update(&p, &f.source).await.is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("a.conf")).unwrap(),
            "ALPHA"
        );
    }

    #[tokio::test]
    async fn mounts_and_sub_paths() {
        let f = fixture();
        let container: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "scratch", "mountPath": "/ro", "readOnly": true},
            {"name": "scratch", "mountPath": "/sub", "subPath": "a/b"},
            {"name": "conf", "mountPath": "/etc/a.conf", "subPath": "a.conf"},
            {"name": "conf", "mountPath": "/etc/conf"}
        ]}))
        .unwrap();
        let p = pod(
            json!([{"name": "scratch", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "cfg"}}]),
            json!([container]),
        );
        let vols = f.manager.setup(&p, &f.source).await.unwrap();
        let scratch = vols.get("scratch").unwrap().host_path.clone();
        let conf = vols.get("conf").unwrap().host_path.clone();
        let mounts = vols.mounts_for(&container).unwrap();
        let canonical_scratch = std::fs::canonicalize(&scratch).unwrap();
        assert_eq!(
            mounts,
            [
                Mount {
                    host_path: scratch.clone(),
                    container_path: "/scratch".into(),
                    read_only: false
                },
                Mount {
                    host_path: scratch.clone(),
                    container_path: "/ro".into(),
                    read_only: true
                },
                Mount {
                    host_path: canonical_scratch.join("a/b"),
                    container_path: "/sub".into(),
                    read_only: false
                },
                Mount {
                    host_path: std::fs::canonicalize(&conf)
                        .unwrap()
                        .join(data_target(&conf))
                        .join("a.conf"),
                    container_path: "/etc/a.conf".into(),
                    read_only: true,
                },
                Mount {
                    host_path: conf.clone(),
                    container_path: "/etc/conf".into(),
                    read_only: true
                },
            ]
        );
        assert!(scratch.join("a/b").is_dir());

        let one = |vm: serde_json::Value| -> Container {
            serde_json::from_value(json!({"name": "c", "volumeMounts": [vm]})).unwrap()
        };
        // Escapes: `..`, absolute paths, and symlinks pointing out of the volume.
        std::os::unix::fs::symlink("/etc", scratch.join("out")).unwrap();
        std::os::unix::fs::symlink("../../..", scratch.join("up")).unwrap();
        for sub in ["../x", "a/../../x", "/etc", "out", "out/passwd", "up/x"] {
            let err = vols
                .mounts_for(&one(
                    json!({"name": "scratch", "mountPath": "/x", "subPath": sub}),
                ))
                .unwrap_err();
            assert!(
                matches!(err, VolumeError::SubPathEscape { .. }),
                "{sub}: {err}"
            );
        }
        // A symlink that stays inside is fine.
        std::os::unix::fs::symlink("a", scratch.join("alias")).unwrap();
        let m = vols
            .mounts_for(&one(
                json!({"name": "scratch", "mountPath": "/x", "subPath": "alias/b"}),
            ))
            .unwrap();
        assert_eq!(m[0].host_path, canonical_scratch.join("a/b"));
        // Missing subPaths are not created in read-only volume kinds.
        let err = vols
            .mounts_for(&one(
                json!({"name": "conf", "mountPath": "/x", "subPath": "nope"}),
            ))
            .unwrap_err();
        assert!(matches!(err, VolumeError::SubPathMissing { .. }), "{err}");
        assert!(!conf.join("nope").exists());
        let err = vols
            .mounts_for(&one(json!({"name": "ghost", "mountPath": "/x"})))
            .unwrap_err();
        assert!(matches!(err, VolumeError::UnknownVolume { .. }), "{err}");

        // subPathExpr expands from the container's environment.
        let expr =
            one(json!({"name": "scratch", "mountPath": "/x", "subPathExpr": "logs/$(POD_NAME)"}));
        let m = vols
            .mounts_for_env(&expr, &[("POD_NAME".into(), "p".into())])
            .unwrap();
        assert_eq!(m[0].host_path, canonical_scratch.join("logs/p"));
        let err = vols.mounts_for(&expr).unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume scratch: missing value for POD_NAME"
        );
    }

    #[test]
    fn teardown_is_idempotent_and_checks_uid() {
        let tmp = tempfile::tempdir().unwrap();
        let manager = VolumeManager::new(tmp.path().join("pods"));
        assert!(manager.list_pod_dirs().unwrap().is_empty());
        manager.teardown("never-existed").unwrap();
        std::fs::create_dir_all(manager.pod_dir("u1").join("volumes/x")).unwrap();
        std::fs::create_dir_all(manager.pod_dir("u2")).unwrap();
        std::fs::write(manager.pods_dir().join("stray-file"), "").unwrap();
        assert_eq!(manager.list_pod_dirs().unwrap(), ["u1", "u2"]);
        manager.teardown("u1").unwrap();
        manager.teardown("u1").unwrap();
        assert_eq!(manager.list_pod_dirs().unwrap(), ["u2"]);
        for bad in ["", "..", "a/b"] {
            assert!(matches!(
                manager.teardown(bad),
                Err(VolumeError::InvalidPath { .. })
            ));
        }
        assert!(tmp.path().join("pods").exists());
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/a\\134b\\011"), "/a\\b\t");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
    }

    #[test]
    fn payload_paths() {
        assert_eq!(clean_payload_path("v", "a/./b//c").unwrap(), "a/b/c");
        for bad in ["", "/abs", "..x", "a/../b", "..", "./", "..data/x"] {
            assert!(clean_payload_path("v", bad).is_err(), "{bad:?}");
        }
    }
}
