//! cgroup v1: one hierarchy per controller under the mount (`<mount>/cpu`, `<mount>/memory`,
//! ...). A pod's cgroup is created in every hierarchy runc uses (so container cgroups below it
//! nest everywhere), `cpuset.cpus`/`cpuset.mems` are copied from the parent as the kernel leaves
//! them empty, and the settings go to `cpu.shares`, `cpu.cfs_period_us`, `cpu.cfs_quota_us`,
//! `memory.limit_in_bytes` and `pids.max`. On a hybrid host the `unified` (v2) hierarchy is
//! kept in step too, since runc creates container cgroups there as well.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{
    CgroupError, CgroupVersion, Cgroups, KUBEPODS, PodResources, QosClass, check_uid,
    create_levels, keyed_counter, normalize_root, pod_path, pods_in, read_file, remove_trees,
    resolve, tier_path, write_file,
};

/// The hierarchies a cgroup is created in, by controller (or hierarchy) name; co-mounted ones
/// such as `cpu,cpuacct` are recognised by any of their names.
const HIERARCHIES: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "pids",
    "blkio",
    "devices",
    "freezer",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
    "systemd",
    "unified",
];

/// One mounted v1 hierarchy.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// Its directory, symlinks resolved (`<mount>/cpu,cpuacct`).
    path: PathBuf,
    /// The controllers it carries (`["cpu", "cpuacct"]`).
    controllers: Vec<String>,
}

/// The cgroup v1 writer.
#[derive(Debug)]
pub struct V1 {
    root: String,
    mount: PathBuf,
    hierarchies: Vec<Hierarchy>,
}

impl V1 {
    /// Finds the hierarchies under `mount` for the cgroup root `root`; needs at least `cpu` and
    /// `memory`.
    pub fn new(root: &str, mount: &Path) -> Result<Self, CgroupError> {
        let root = normalize_root(root)?;
        let entries = std::fs::read_dir(mount).map_err(|source| CgroupError::Io {
            action: "list",
            path: mount.to_path_buf(),
            source,
        })?;
        let known = |name: &str| name.split(',').any(|n| HIERARCHIES.contains(&n));
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = entry.path();
            if !known(&name) || !path.is_dir() {
                continue;
            }
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            if hierarchies.iter().any(|h| h.path == path) {
                continue;
            }
            // `cpu` may be a symlink to `cpu,cpuacct`: the target names all controllers.
            let target = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| known(n))
                .unwrap_or(&name);
            let controllers = target.split(',').map(str::to_string).collect();
            hierarchies.push(Hierarchy { path, controllers });
        }
        hierarchies.sort_by(|a, b| a.path.cmp(&b.path));
        let v1 = V1 {
            root,
            mount: mount.to_path_buf(),
            hierarchies,
        };
        if v1.hierarchy("cpu").is_none() || v1.hierarchy("memory").is_none() {
            return Err(CgroupError::NoHierarchy {
                mount: mount.to_path_buf(),
            });
        }
        Ok(v1)
    }

    /// The hierarchy directories a cgroup is created in and removed from, sorted.
    pub fn hierarchies(&self) -> Vec<&Path> {
        self.hierarchies.iter().map(|h| h.path.as_path()).collect()
    }

    fn hierarchy(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
    }

    fn required(&self, controller: &'static str) -> Result<&Hierarchy, CgroupError> {
        self.hierarchy(controller)
            .ok_or_else(|| CgroupError::NoController {
                controller,
                mount: self.mount.clone(),
            })
    }

    /// Creates the cgroup `relative` (and its parents) in every hierarchy.
    fn create(&self, relative: &str) -> Result<(), CgroupError> {
        for h in &self.hierarchies {
            let cpuset = h.controllers.iter().any(|c| c == "cpuset");
            create_levels(&h.path, relative, |parent, child| {
                if cpuset {
                    copy_cpuset(parent, child)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Writes `resources` into the cgroup `relative`.
    fn apply(&self, relative: &str, resources: &PodResources) -> Result<(), CgroupError> {
        let cpu = resolve(&self.required("cpu")?.path, relative)?;
        write_file(&cpu.join("cpu.shares"), &resources.cpu_shares.to_string())?;
        let quota = resources
            .cpu_quota
            .map_or_else(|| "-1".to_string(), |q| q.to_string());
        let quota_file = cpu.join("cpu.cfs_quota_us");
        if let Some(period) = resources.cpu_period {
            let period_file = cpu.join("cpu.cfs_period_us");
            let period = period.to_string();
            // A new period may conflict with the old quota; then set the quota first, as runc.
            if write_file(&period_file, &period).is_err() {
                write_file(&quota_file, &quota)?;
                return write_file(&period_file, &period);
            }
        }
        write_file(&quota_file, &quota)?;

        let memory = resolve(&self.required("memory")?.path, relative)?;
        let limit = resources
            .memory_limit
            .map_or_else(|| "-1".to_string(), |m| m.to_string());
        write_file(&memory.join("memory.limit_in_bytes"), &limit)?;

        match (self.hierarchy("pids"), resources.pids_limit) {
            (Some(h), limit) => {
                let pids = resolve(&h.path, relative)?;
                let limit = limit.map_or_else(|| "max".to_string(), |p| p.to_string());
                write_file(&pids.join("pids.max"), &limit)?;
            }
            (None, Some(_)) => {
                self.required("pids")?;
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The cgroup `relative` in every hierarchy.
    fn everywhere(&self, relative: &str) -> Result<Vec<PathBuf>, CgroupError> {
        self.hierarchies
            .iter()
            .map(|h| resolve(&h.path, relative))
            .collect()
    }
}

/// Fills a new cpuset cgroup's `cpuset.cpus` and `cpuset.mems` from its parent's; the kernel
/// leaves them empty (unless `cgroup.clone_children` is set) and an empty cpuset takes no tasks.
fn copy_cpuset(parent: &Path, child: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let current = std::fs::read_to_string(child.join(file)).unwrap_or_default();
        if current.trim().is_empty() {
            let value = read_file(&parent.join(file))?;
            write_file(&child.join(file), value.trim())?;
        }
    }
    Ok(())
}

impl Cgroups for V1 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn root(&self) -> &str {
        &self.root
    }

    fn ensure_qos_tiers(&self) -> Result<(), CgroupError> {
        for qos in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            self.create(&tier_path(&self.root, qos))?;
        }
        let best_effort = resolve(
            &self.required("cpu")?.path,
            &tier_path(&self.root, QosClass::BestEffort),
        )?;
        write_file(
            &best_effort.join("cpu.shares"),
            &super::qos::MIN_SHARES.to_string(),
        )
    }

    fn remove_qos_tiers(&self) -> Result<(), CgroupError> {
        remove_trees(&self.everywhere(&format!("{}/{KUBEPODS}", self.root))?)
    }

    fn create_pod(
        &self,
        qos: QosClass,
        uid: &str,
        resources: &PodResources,
    ) -> Result<(), CgroupError> {
        check_uid(uid)?;
        let relative = pod_path(&self.root, qos, uid);
        self.create(&relative)?;
        self.apply(&relative, resources)
    }

    fn update_pod(
        &self,
        qos: QosClass,
        uid: &str,
        resources: &PodResources,
    ) -> Result<(), CgroupError> {
        check_uid(uid)?;
        let relative = pod_path(&self.root, qos, uid);
        let cpu = resolve(&self.required("cpu")?.path, &relative)?;
        if !cpu.is_dir() {
            return Err(CgroupError::NotFound { path: cpu });
        }
        self.apply(&relative, resources)
    }

    fn remove_pod(&self, qos: QosClass, uid: &str) -> Result<(), CgroupError> {
        check_uid(uid)?;
        remove_trees(&self.everywhere(&pod_path(&self.root, qos, uid))?)
    }

    fn pod_exists(&self, qos: QosClass, uid: &str) -> bool {
        check_uid(uid).is_ok()
            && self
                .everywhere(&pod_path(&self.root, qos, uid))
                .is_ok_and(|dirs| dirs.iter().any(|d| d.is_dir()))
    }

    fn list_pods(&self) -> Result<Vec<(QosClass, String)>, CgroupError> {
        let mut pods = BTreeSet::new();
        for h in &self.hierarchies {
            pods_in(&h.path, &self.root, &mut pods)?;
        }
        Ok(pods.into_iter().collect())
    }

    fn oom_kill_count(&self, cgroup_path: &str) -> Result<u64, CgroupError> {
        let dir = resolve(&self.required("memory")?.path, cgroup_path)?;
        let control = dir.join("memory.oom_control");
        if let Some(kills) = keyed_counter(&control, &read_file(&control)?, "oom_kill")? {
            return Ok(kills);
        }
        // Kernels before 4.13 have no oom_kill counter: count hits of the limit instead.
        let failcnt = dir.join("memory.failcnt");
        let text = read_file(&failcnt)?;
        text.trim().parse().map_err(|_| CgroupError::Parse {
            path: failcnt,
            content: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::kubelet::cgroups::detect;

    const UID: &str = "6f1c2a8e-1b2c-4d3e-8f9a-0b1c2d3e4f5a";

    /// A fake v1 mount: controller directories (cpu and cpuacct separate, `net_cls,net_prio`
    /// co-mounted with symlinks) and a root cpuset.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = &std::fs::canonicalize(dir.path()).expect("canonical");
        for h in [
            "cpu",
            "cpuacct",
            "cpuset",
            "memory",
            "pids",
            "blkio",
            "devices",
            "freezer",
            "systemd",
            "unified",
            "net_cls,net_prio",
            "not-a-controller",
        ] {
            std::fs::create_dir(m.join(h)).expect("mkdir");
        }
        std::os::unix::fs::symlink("net_cls,net_prio", m.join("net_cls")).expect("symlink");
        std::os::unix::fs::symlink("net_cls,net_prio", m.join("net_prio")).expect("symlink");
        std::fs::write(m.join("cpuset/cpuset.cpus"), "0-3\n").expect("write");
        std::fs::write(m.join("cpuset/cpuset.mems"), "0\n").expect("write");
        dir
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    #[test]
    fn finds_hierarchies_once() {
        let dir = fixture();
        let v1 = V1::new("/wlt1", dir.path()).expect("v1");
        let names: Vec<String> = v1
            .hierarchies()
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        assert_eq!(
            names,
            [
                "blkio",
                "cpu",
                "cpuacct",
                "cpuset",
                "devices",
                "freezer",
                "memory",
                "net_cls,net_prio",
                "pids",
                "systemd",
                "unified",
            ]
        );
        let cgroups = detect("/wlt1", dir.path()).expect("detect");
        assert_eq!(cgroups.version(), CgroupVersion::V1);
        assert_eq!(cgroups.root(), "/wlt1");
    }

    #[test]
    fn no_cpu_or_memory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("cpu")).expect("mkdir");
        assert!(matches!(
            V1::new("", dir.path()),
            Err(CgroupError::NoHierarchy { .. })
        ));
    }

    #[test]
    fn tiers_in_every_hierarchy() {
        let dir = fixture();
        let m = &std::fs::canonicalize(dir.path()).expect("canonical");
        let v1 = V1::new("/wlt1", m).expect("v1");
        v1.ensure_qos_tiers().expect("tiers");
        v1.ensure_qos_tiers().expect("idempotent");
        for h in v1.hierarchies() {
            for tier in ["kubepods", "kubepods/burstable", "kubepods/besteffort"] {
                assert!(h.join("wlt1").join(tier).is_dir(), "{}/{tier}", h.display());
            }
        }
        assert!(!m.join("not-a-controller/wlt1").exists());
        assert_eq!(read(m.join("cpu/wlt1/kubepods/besteffort/cpu.shares")), "2");
        for level in ["wlt1", "wlt1/kubepods", "wlt1/kubepods/burstable"] {
            assert_eq!(
                read(m.join("cpuset").join(level).join("cpuset.cpus")),
                "0-3"
            );
            assert_eq!(read(m.join("cpuset").join(level).join("cpuset.mems")), "0");
        }
    }

    #[test]
    fn pod_files_and_values() {
        let dir = fixture();
        let m = &std::fs::canonicalize(dir.path()).expect("canonical");
        let v1 = V1::new("/wlt1", m).expect("v1");
        v1.ensure_qos_tiers().expect("tiers");

        let burstable = PodResources {
            cpu_shares: 307,
            cpu_quota: None,
            cpu_period: None,
            memory_limit: None,
            pids_limit: None,
        };
        v1.create_pod(QosClass::Burstable, UID, &burstable)
            .expect("create");
        assert_eq!(
            v1.pod_path(QosClass::Burstable, UID),
            format!("/wlt1/kubepods/burstable/pod{UID}")
        );
        let pod = format!("wlt1/kubepods/burstable/pod{UID}");
        assert_eq!(read(m.join("cpu").join(&pod).join("cpu.shares")), "307");
        assert_eq!(
            read(m.join("cpu").join(&pod).join("cpu.cfs_quota_us")),
            "-1"
        );
        assert!(!m.join("cpu").join(&pod).join("cpu.cfs_period_us").exists());
        assert_eq!(
            read(m.join("memory").join(&pod).join("memory.limit_in_bytes")),
            "-1"
        );
        assert_eq!(read(m.join("pids").join(&pod).join("pids.max")), "max");
        assert_eq!(read(m.join("cpuset").join(&pod).join("cpuset.cpus")), "0-3");
        for h in v1.hierarchies() {
            assert!(h.join(&pod).is_dir(), "{}", h.display());
        }

        let guaranteed = PodResources {
            cpu_shares: 512,
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(128 << 20),
            pids_limit: Some(1024),
        };
        let uid2 = "guaranteed-1";
        v1.create_pod(QosClass::Guaranteed, uid2, &guaranteed)
            .expect("create");
        let pod2 = format!("wlt1/kubepods/pod{uid2}");
        assert_eq!(read(m.join("cpu").join(&pod2).join("cpu.shares")), "512");
        assert_eq!(
            read(m.join("cpu").join(&pod2).join("cpu.cfs_quota_us")),
            "50000"
        );
        assert_eq!(
            read(m.join("cpu").join(&pod2).join("cpu.cfs_period_us")),
            "100000"
        );
        assert_eq!(
            read(m.join("memory").join(&pod2).join("memory.limit_in_bytes")),
            "134217728"
        );
        assert_eq!(read(m.join("pids").join(&pod2).join("pids.max")), "1024");

        // Updates rewrite every value, unset limits as "no limit".
        v1.update_pod(QosClass::Guaranteed, uid2, &burstable)
            .expect("update");
        assert_eq!(
            read(m.join("cpu").join(&pod2).join("cpu.cfs_quota_us")),
            "-1"
        );
        assert_eq!(
            read(m.join("memory").join(&pod2).join("memory.limit_in_bytes")),
            "-1"
        );
        assert_eq!(read(m.join("pids").join(&pod2).join("pids.max")), "max");
        assert!(matches!(
            v1.update_pod(QosClass::BestEffort, "missing", &burstable),
            Err(CgroupError::NotFound { .. })
        ));

        assert!(v1.pod_exists(QosClass::Burstable, UID));
        assert!(!v1.pod_exists(QosClass::BestEffort, UID));
        assert_eq!(
            v1.list_pods().expect("list"),
            vec![
                (QosClass::Guaranteed, uid2.to_string()),
                (QosClass::Burstable, UID.to_string()),
            ]
        );
    }

    #[test]
    fn bad_uid_creates_nothing() {
        let dir = fixture();
        let v1 = V1::new("/wlt1", dir.path()).expect("v1");
        let res = PodResources::unlimited();
        for uid in ["../escape", "a/b", ""] {
            assert!(matches!(
                v1.create_pod(QosClass::Burstable, uid, &res),
                Err(CgroupError::InvalidName { .. })
            ));
        }
        assert!(!dir.path().join("cpu/wlt1").exists());
        assert!(!dir.path().join("cpu/escape").exists());
    }

    #[test]
    fn remove_pod_everywhere_or_busy() {
        let dir = fixture();
        let m = &std::fs::canonicalize(dir.path()).expect("canonical");
        let v1 = V1::new("/wlt1", m).expect("v1");
        // A pod left by an earlier agent, with container cgroups runc created in some
        // hierarchies (empty directories, as rmdir on cgroupfs ignores interface files).
        let pod = format!("wlt1/kubepods/besteffort/pod{UID}");
        for h in ["cpu", "memory", "unified"] {
            std::fs::create_dir_all(m.join(h).join(&pod).join("ctr")).expect("mkdir");
        }
        std::fs::create_dir_all(m.join("pids").join(&pod)).expect("mkdir");
        assert_eq!(
            v1.list_pods().expect("list"),
            vec![(QosClass::BestEffort, UID.to_string())]
        );
        std::fs::write(
            m.join("memory").join(&pod).join("ctr/cgroup.procs"),
            "4242\n",
        )
        .expect("write");
        match v1.remove_pod(QosClass::BestEffort, UID) {
            Err(CgroupError::Busy { path, pids }) => {
                assert_eq!(path, m.join("memory").join(&pod).join("ctr"));
                assert_eq!(pids, vec![4242]);
            }
            other => panic!("expected busy, got {other:?}"),
        }
        assert!(m.join("cpu").join(&pod).join("ctr").is_dir());
        std::fs::remove_file(m.join("memory").join(&pod).join("ctr/cgroup.procs")).expect("rm");
        v1.remove_pod(QosClass::BestEffort, UID).expect("remove");
        for h in ["cpu", "memory", "unified", "pids"] {
            assert!(!m.join(h).join(&pod).exists(), "{h}");
            assert!(m.join(h).join("wlt1/kubepods/besteffort").is_dir(), "{h}");
        }
        assert!(!v1.pod_exists(QosClass::BestEffort, UID));
        v1.remove_pod(QosClass::BestEffort, UID)
            .expect("gone is fine");
    }

    #[test]
    fn oom_counters() {
        let dir = fixture();
        let m = &std::fs::canonicalize(dir.path()).expect("canonical");
        let v1 = V1::new("", m).expect("v1");
        let ctr = m.join("memory/kubepods/burstable/podu/ctr");
        std::fs::create_dir_all(&ctr).expect("mkdir");
        std::fs::write(
            ctr.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .expect("write");
        let path = v1.container_path(QosClass::Burstable, "u", "ctr");
        assert_eq!(path, "/kubepods/burstable/podu/ctr");
        assert_eq!(v1.oom_kill_count(&path).expect("count"), 2);
        assert!(v1.oom_killed(&path).expect("read"));
        // An old kernel without the counter: fall back to memory.failcnt.
        std::fs::write(
            ctr.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .expect("write");
        std::fs::write(ctr.join("memory.failcnt"), "0\n").expect("write");
        assert!(!v1.oom_killed(&path).expect("read"));
        assert!(v1.oom_killed("/kubepods/burstable/podu/missing").is_err());
        assert!(matches!(
            v1.oom_killed("/kubepods/../etc"),
            Err(CgroupError::InvalidName { .. })
        ));
    }
}
