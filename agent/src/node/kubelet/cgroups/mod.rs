//! Kubelet cgroups: QoS classes, the kubepods layout and the cgroup v1/v2 writers.
//!
//! The layout is kubelet's with the cgroupfs driver, under the agent's `--cgroup-root`:
//!
//! ```text
//! <root>/kubepods/pod<uid>/<container>              Guaranteed
//! <root>/kubepods/burstable/pod<uid>/<container>    Burstable
//! <root>/kubepods/besteffort/pod<uid>/<container>   BestEffort
//! ```
//!
//! [`qos`] holds the pure math (QoS class, shares, quota, OOM score, quantities); [`v1`] and
//! [`v2`] write it to the kernel behind the [`Cgroups`] trait, and [`detect`] picks one the way
//! runc does: v2 only on a pure unified host, v1 on legacy and hybrid ones. The kubelet creates
//! a pod's cgroup; runc creates the container cgroups below it from `linux.cgroupsPath` (see
//! [`Cgroups::container_path`]) and [`oci_linux_resources`].

pub mod qos;
pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};

pub use qos::{ContainerResources, PodResources, QosClass, QuantityError};

/// Where cgroup hierarchies are mounted on a normal host.
pub const DEFAULT_MOUNT: &str = "/sys/fs/cgroup";
/// The name of the cgroup that holds every pod.
pub const KUBEPODS: &str = "kubepods";
/// The Burstable tier under [`KUBEPODS`].
pub const BURSTABLE: &str = "burstable";
/// The BestEffort tier under [`KUBEPODS`].
pub const BEST_EFFORT: &str = "besteffort";

/// Which cgroup interface the host gives resource control through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (also hybrid hosts with a v2 hierarchy at `unified`).
    V1,
    /// The unified hierarchy.
    V2,
}

/// What went wrong in a cgroup operation, naming the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A filesystem operation on a cgroup failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done (`create cgroup`, `read`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a value into a cgroup interface file failed.
    #[error("failed to write {value:?} to {path}")]
    Write {
        /// The value.
        value: String,
        /// The interface file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup still holds processes, so it was not removed. Nothing is killed: stop the
    /// containers first.
    #[error("cgroup {path} is busy: processes {pids:?} remain")]
    Busy {
        /// The cgroup with processes in it.
        path: PathBuf,
        /// Those processes (empty when the kernel refused without listing any).
        pids: Vec<u32>,
    },
    /// The pod cgroup does not exist (for updates).
    #[error("cgroup {path} does not exist")]
    NotFound {
        /// The missing directory.
        path: PathBuf,
    },
    /// A root, pod UID or cgroup path that cannot name a cgroup below the root.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName {
        /// The offending text.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// An interface file held something unexpected.
    #[error("failed to parse {path}: unexpected {content:?}")]
    Parse {
        /// The interface file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// A setting needs a controller this host does not mount.
    #[error("no {controller} controller under {mount}")]
    NoController {
        /// The controller (`cpu`, `memory`, `pids`).
        controller: &'static str,
        /// The cgroup mount that lacks it.
        mount: PathBuf,
    },
    /// Neither a v2 hierarchy nor v1 `cpu` and `memory` hierarchies were found.
    #[error("no usable cgroup hierarchy under {mount}")]
    NoHierarchy {
        /// The cgroup mount point.
        mount: PathBuf,
    },
    /// A resource quantity in the pod could not be parsed.
    #[error(transparent)]
    Quantity(#[from] QuantityError),
}

/// The kubelet's view of the node's cgroups: the QoS tiers and one cgroup per pod.
pub trait Cgroups: Send + Sync + std::fmt::Debug {
    /// Which interface this writes.
    fn version(&self) -> CgroupVersion;

    /// The agent's cgroup root, normalized: `""` for the top, else `/a/b` without a trailing
    /// slash.
    fn root(&self) -> &str;

    /// Creates `<root>/kubepods`, `<root>/kubepods/burstable` and `<root>/kubepods/besteffort`
    /// (BestEffort gets the minimum CPU weight). Idempotent.
    fn ensure_qos_tiers(&self) -> Result<(), CgroupError>;

    /// Removes the tiers and everything below them, if no process is left anywhere inside
    /// (`windlass reset`); [`CgroupError::Busy`] otherwise.
    fn remove_qos_tiers(&self) -> Result<(), CgroupError>;

    /// The pod's cgroup as runc's `linux.cgroupsPath` names it, such as
    /// `/wlt1a2b3/kubepods/burstable/pod<uid>`; Guaranteed pods sit directly under `kubepods`.
    fn pod_path(&self, qos: QosClass, uid: &str) -> String {
        pod_path(self.root(), qos, uid)
    }

    /// A container's cgroup below its pod's: `<pod_path>/<name>`.
    fn container_path(&self, qos: QosClass, uid: &str, name: &str) -> String {
        format!("{}/{name}", self.pod_path(qos, uid))
    }

    /// Creates the pod's cgroup (and any missing parent) and applies `resources`. Idempotent:
    /// on an existing cgroup it only applies `resources`.
    fn create_pod(
        &self,
        qos: QosClass,
        uid: &str,
        resources: &PodResources,
    ) -> Result<(), CgroupError>;

    /// Applies `resources` to an existing pod cgroup; [`CgroupError::NotFound`] if it is not
    /// there. Unset limits are written as "no limit".
    fn update_pod(
        &self,
        qos: QosClass,
        uid: &str,
        resources: &PodResources,
    ) -> Result<(), CgroupError>;

    /// Removes the pod's cgroup and any container cgroups left below it, in every hierarchy,
    /// with rmdir only. If a process remains anywhere inside, nothing is removed and
    /// [`CgroupError::Busy`] names it. A pod that is already gone is not an error.
    fn remove_pod(&self, qos: QosClass, uid: &str) -> Result<(), CgroupError>;

    /// Whether the pod's cgroup exists (in any hierarchy).
    fn pod_exists(&self, qos: QosClass, uid: &str) -> bool;

    /// Every pod cgroup found under the tiers, as `(class, uid)`, sorted; for re-adopting pods
    /// after an agent restart.
    fn list_pods(&self) -> Result<Vec<(QosClass, String)>, CgroupError>;

    /// How many times the OOM killer killed a process in the cgroup `cgroup_path` (a path as
    /// [`Cgroups::container_path`] gives): v1 `memory.oom_control` `oom_kill` (or
    /// `memory.failcnt` on kernels without that counter), v2 `memory.events` `oom_kill`.
    fn oom_kill_count(&self, cgroup_path: &str) -> Result<u64, CgroupError>;

    /// Whether a process in the cgroup `cgroup_path` was OOM-killed; see
    /// [`Cgroups::oom_kill_count`].
    fn oom_killed(&self, cgroup_path: &str) -> Result<bool, CgroupError> {
        Ok(self.oom_kill_count(cgroup_path)? > 0)
    }
}

/// Picks the cgroup interface under `mount` (normally [`DEFAULT_MOUNT`]): v2 when
/// `<mount>/cgroup.controllers` exists (a pure unified host), v1 otherwise (a hybrid host's
/// `unified` hierarchy does not count for resource control, as in runc). `root` is the agent's
/// `--cgroup-root` (`""` or `/` for the top, `/wlt1a2b3` in tests).
pub fn detect(root: &str, mount: &Path) -> Result<Box<dyn Cgroups>, CgroupError> {
    if mount.join("cgroup.controllers").is_file() {
        Ok(Box::new(v2::V2::new(root, mount)?))
    } else {
        Ok(Box::new(v1::V1::new(root, mount)?))
    }
}

/// The OCI `linux.resources` object for a container: `cpu` (`shares`, `period`, and `quota`
/// when limited), `memory.limit` when limited, and `pids.limit` when given. runc converts it to
/// v2 files itself. `oom_score_adj` is not a resource: it goes in `process.oomScoreAdj`.
pub fn oci_linux_resources(
    resources: &ContainerResources,
    pids_limit: Option<i64>,
) -> serde_json::Value {
    let mut cpu = serde_json::json!({
        "shares": resources.cpu_shares,
        "period": resources.cpu_period,
    });
    if let Some(quota) = resources.cpu_quota {
        cpu["quota"] = quota.into();
    }
    let mut out = serde_json::json!({ "cpu": cpu });
    if let Some(limit) = resources.memory_limit {
        out["memory"] = serde_json::json!({ "limit": limit });
    }
    if let Some(limit) = pids_limit.filter(|p| *p > 0) {
        out["pids"] = serde_json::json!({ "limit": limit });
    }
    out
}

/// Checks and normalizes a cgroup root: `""`/`/` → `""`, `a/b/` → `/a/b`.
pub(crate) fn normalize_root(root: &str) -> Result<String, CgroupError> {
    let mut out = String::new();
    for part in root.split('/').filter(|p| !p.is_empty()) {
        check_component(part, root)?;
        out.push('/');
        out.push_str(part);
    }
    Ok(out)
}

/// Rejects a path component that could leave the cgroup tree or is not a plain name.
fn check_component(part: &str, whole: &str) -> Result<(), CgroupError> {
    let invalid = |reason| CgroupError::InvalidName {
        name: whole.to_string(),
        reason,
    };
    if part.is_empty() {
        return Err(invalid("empty name"));
    }
    if part == "." || part == ".." {
        return Err(invalid("relative component"));
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
    {
        return Err(invalid("only letters, digits and - _ . : @ are allowed"));
    }
    Ok(())
}

/// Checks a pod UID for use in `pod<uid>`.
pub(crate) fn check_uid(uid: &str) -> Result<(), CgroupError> {
    check_component(uid, uid)
}

/// The tier directory of a QoS class, relative to the hierarchy: `<root>/kubepods[/<tier>]`.
pub(crate) fn tier_path(root: &str, qos: QosClass) -> String {
    match qos {
        QosClass::Guaranteed => format!("{root}/{KUBEPODS}"),
        QosClass::Burstable => format!("{root}/{KUBEPODS}/{BURSTABLE}"),
        QosClass::BestEffort => format!("{root}/{KUBEPODS}/{BEST_EFFORT}"),
    }
}

/// `<tier>/pod<uid>`, starting with `/`.
pub(crate) fn pod_path(root: &str, qos: QosClass, uid: &str) -> String {
    format!("{}/pod{uid}", tier_path(root, qos))
}

/// `hierarchy` joined with a cgroup path such as `/a/b`, after checking each component.
pub(crate) fn resolve(hierarchy: &Path, cgroup_path: &str) -> Result<PathBuf, CgroupError> {
    let mut out = hierarchy.to_path_buf();
    for part in cgroup_path.split('/').filter(|p| !p.is_empty()) {
        check_component(part, cgroup_path)?;
        out.push(part);
    }
    Ok(out)
}

/// Writes `value` into the interface file `path`.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        value: value.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the interface file `path`.
pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Creates every missing directory from `base` down to `base/<relative>`, one level at a time,
/// calling `created(parent, child)` for each directory it made.
pub(crate) fn create_levels(
    base: &Path,
    relative: &str,
    mut created: impl FnMut(&Path, &Path) -> Result<(), CgroupError>,
) -> Result<PathBuf, CgroupError> {
    let mut dir = base.to_path_buf();
    for part in relative.split('/').filter(|p| !p.is_empty()) {
        check_component(part, relative)?;
        let parent = dir.clone();
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => created(&parent, &dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Io {
                    action: "create cgroup",
                    path: dir,
                    source,
                });
            }
        }
    }
    Ok(dir)
}

/// The `oom_kill <n>` (or any `<key> <n>`) counter of a flat-keyed interface file.
pub(crate) fn keyed_counter(
    path: &Path,
    text: &str,
    key: &str,
) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some(key) {
            let value = fields.next().and_then(|v| v.parse().ok());
            return match value {
                Some(v) => Ok(Some(v)),
                None => Err(CgroupError::Parse {
                    path: path.to_path_buf(),
                    content: line.to_string(),
                }),
            };
        }
    }
    Ok(None)
}

/// The processes in the cgroup directory `dir` (none if it has no `cgroup.procs`).
pub(crate) fn procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `top` and every directory below it, children before parents; empty when `top` is missing.
fn deepest_first(top: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    if !top.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs = vec![top.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let entries = match std::fs::read_dir(&dirs[i]) {
            Ok(entries) => entries,
            // Removed meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                i += 1;
                continue;
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    action: "list",
                    path: dirs[i].clone(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
        i += 1;
    }
    dirs.reverse();
    Ok(dirs)
}

/// Removes the cgroup trees `tops` (the same cgroup in each hierarchy) with rmdir only. First
/// checks every directory for processes and removes nothing if one has any.
pub(crate) fn remove_trees(tops: &[PathBuf]) -> Result<(), CgroupError> {
    let mut all = Vec::new();
    for top in tops {
        all.extend(deepest_first(top)?);
    }
    for dir in &all {
        let pids = procs(dir);
        if !pids.is_empty() {
            return Err(CgroupError::Busy {
                path: dir.clone(),
                pids,
            });
        }
    }
    for dir in &all {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                return Err(CgroupError::Busy {
                    path: dir.clone(),
                    pids: procs(dir),
                });
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    action: "remove cgroup",
                    path: dir.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The `(class, uid)` of every `pod<uid>` directory under the tiers of `hierarchy`.
pub(crate) fn pods_in(
    hierarchy: &Path,
    root: &str,
    out: &mut std::collections::BTreeSet<(QosClass, String)>,
) -> Result<(), CgroupError> {
    for qos in [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ] {
        let tier = resolve(hierarchy, &tier_path(root, qos))?;
        let entries = match std::fs::read_dir(&tier) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CgroupError::Io {
                    action: "list",
                    path: tier,
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            if let Some(uid) = name.to_str().and_then(|n| n.strip_prefix("pod"))
                && check_uid(uid).is_ok()
            {
                out.insert((qos, uid.to_string()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_normalized() {
        for (root, want) in [
            ("", ""),
            ("/", ""),
            ("/wlt1a2b3", "/wlt1a2b3"),
            ("a//b/", "/a/b"),
        ] {
            assert_eq!(normalize_root(root).expect(root), want);
        }
        for bad in ["/a/../b", "/./a", "/a b", "/a\0"] {
            assert!(
                matches!(normalize_root(bad), Err(CgroupError::InvalidName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn layout_follows_kubelet() {
        let uid = "0d3b6f3e-8a7b-4d4c-9a59-1f2e3d4c5b6a";
        assert_eq!(
            pod_path("/wlt1a2b3", QosClass::Burstable, uid),
            format!("/wlt1a2b3/kubepods/burstable/pod{uid}")
        );
        assert_eq!(
            pod_path("", QosClass::Guaranteed, uid),
            format!("/kubepods/pod{uid}")
        );
        assert_eq!(
            pod_path("/r", QosClass::BestEffort, uid),
            format!("/r/kubepods/besteffort/pod{uid}")
        );
        assert!(check_uid(uid).is_ok());
        for bad in ["", "..", "a/b", "x y"] {
            assert!(check_uid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oci_resources_json() {
        let limited = ContainerResources {
            cpu_shares: 102,
            cpu_quota: Some(25_000),
            cpu_period: 100_000,
            memory_limit: Some(64 << 20),
            oom_score_adj: 900,
        };
        assert_eq!(
            oci_linux_resources(&limited, Some(100)),
            serde_json::json!({
                "cpu": { "shares": 102, "quota": 25000, "period": 100000 },
                "memory": { "limit": 67108864 },
                "pids": { "limit": 100 },
            })
        );
        let open = ContainerResources {
            cpu_shares: 2,
            cpu_quota: None,
            cpu_period: 100_000,
            memory_limit: None,
            oom_score_adj: 1000,
        };
        assert_eq!(
            oci_linux_resources(&open, None),
            serde_json::json!({ "cpu": { "shares": 2, "period": 100000 } })
        );
    }

    #[test]
    fn keyed_counters() {
        let p = Path::new("memory.events");
        let text = "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n";
        assert_eq!(keyed_counter(p, text, "oom_kill").expect("parses"), Some(1));
        assert_eq!(keyed_counter(p, text, "oom").expect("parses"), Some(2));
        assert_eq!(
            keyed_counter(p, "low 0\n", "oom_kill").expect("parses"),
            None
        );
        assert!(keyed_counter(p, "oom_kill x\n", "oom_kill").is_err());
    }

    #[test]
    fn remove_trees_refuses_busy_and_removes_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a/pod1/ctr");
        let b = dir.path().join("b/pod1/ctr");
        std::fs::create_dir_all(&a).expect("mkdir");
        std::fs::create_dir_all(&b).expect("mkdir");
        std::fs::write(b.join("cgroup.procs"), "42\n").expect("write");
        let tops = [dir.path().join("a/pod1"), dir.path().join("b/pod1")];
        match remove_trees(&tops) {
            Err(CgroupError::Busy { path, pids }) => {
                assert_eq!((path, pids), (b.clone(), vec![42]));
            }
            other => panic!("expected busy, got {other:?}"),
        }
        assert!(a.is_dir(), "nothing removed while busy");
        std::fs::remove_file(b.join("cgroup.procs")).expect("rm");
        remove_trees(&tops).expect("removes");
        assert!(!tops[0].exists() && !tops[1].exists());
        remove_trees(&tops).expect("already gone is fine");
    }
}
