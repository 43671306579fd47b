//! cgroup v2: the unified hierarchy at the mount. Controllers are enabled top-down through
//! `cgroup.subtree_control` along the path (down to the pod, so container cgroups get them
//! too), and a pod's settings go to `cpu.weight` (converted from shares with runc's formula),
//! `cpu.max`, `memory.max` and `pids.max`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::qos::{MAX_SHARES, MIN_SHARES, QUOTA_PERIOD};
use super::{
    CgroupError, CgroupVersion, Cgroups, KUBEPODS, PodResources, QosClass, check_uid,
    create_levels, keyed_counter, normalize_root, pod_path, pods_in, read_file, remove_trees,
    resolve, tier_path, write_file,
};

/// The smallest `cpu.weight`.
pub const MIN_WEIGHT: u64 = 1;
/// The largest `cpu.weight`.
pub const MAX_WEIGHT: u64 = 10_000;

/// `cpu.shares` → `cpu.weight` as runc ≥ 1.3.2 converts them: with `L = log2(shares)`,
/// `weight = ceil(10^(L²/612 + 125L/612 − 7/34))`, a quadratic in log space through
/// 2 → 1, 1024 → 100 (the defaults) and 262144 → 10000; 0 stays 0 ("unset").
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= MIN_SHARES {
        return MIN_WEIGHT;
    }
    if shares >= MAX_SHARES {
        return MAX_WEIGHT;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    let weight = 10f64.powf(exponent);
    // Guard against the last bit of float error pushing an exact value (1024 → 100.000…01)
    // to the next integer.
    let rounded = weight.round();
    let weight = if (weight - rounded).abs() < 1e-9 {
        rounded
    } else {
        weight.ceil()
    };
    (weight as u64).clamp(MIN_WEIGHT, MAX_WEIGHT)
}

/// The cgroup v2 writer.
#[derive(Debug)]
pub struct V2 {
    root: String,
    mount: PathBuf,
    /// The controllers the hierarchy's root offers (`<mount>/cgroup.controllers`).
    controllers: Vec<String>,
}

impl V2 {
    /// The unified hierarchy at `mount` for the cgroup root `root`.
    pub fn new(root: &str, mount: &Path) -> Result<Self, CgroupError> {
        let root = normalize_root(root)?;
        let available = read_file(&mount.join("cgroup.controllers"))?;
        Ok(V2 {
            root,
            mount: mount.to_path_buf(),
            controllers: available.split_whitespace().map(str::to_string).collect(),
        })
    }

    /// The controllers enabled along the path (those of the hierarchy's root).
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    /// Creates the cgroup `relative` and its parents, enabling the controllers in the mount
    /// and every level down to `relative` itself.
    fn create(&self, relative: &str) -> Result<PathBuf, CgroupError> {
        let dir = create_levels(&self.mount, relative, |_, _| Ok(()))?;
        let mut level = self.mount.clone();
        self.enable(&level)?;
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            level.push(part);
            self.enable(&level)?;
        }
        Ok(dir)
    }

    /// Enables in `dir`'s `cgroup.subtree_control` every controller not yet enabled there.
    fn enable(&self, dir: &Path) -> Result<(), CgroupError> {
        let file = dir.join("cgroup.subtree_control");
        let current = std::fs::read_to_string(&file).unwrap_or_default();
        let enabled: BTreeSet<&str> = current.split_whitespace().collect();
        let missing: Vec<String> = self
            .controllers
            .iter()
            .filter(|c| !enabled.contains(c.as_str()))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if write_file(&file, &missing.join(" ")).is_ok() {
            return Ok(());
        }
        // One refused controller fails the whole write; enable the others one by one, as runc.
        for controller in &missing {
            if let Err(e) = write_file(&file, controller) {
                tracing::warn!(error = %e, "cgroup controller not enabled");
            }
        }
        Ok(())
    }

    /// Writes `resources` into the cgroup directory `dir`.
    fn apply(&self, dir: &Path, resources: &PodResources) -> Result<(), CgroupError> {
        let weight = shares_to_weight(resources.cpu_shares);
        write_file(&dir.join("cpu.weight"), &weight.to_string())?;
        let period = resources.cpu_period.unwrap_or(QUOTA_PERIOD);
        let max = match resources.cpu_quota {
            Some(quota) => format!("{quota} {period}"),
            None => format!("max {period}"),
        };
        write_file(&dir.join("cpu.max"), &max)?;
        let memory = resources
            .memory_limit
            .map_or_else(|| "max".to_string(), |m| m.to_string());
        write_file(&dir.join("memory.max"), &memory)?;
        if resources.pids_limit.is_some() || self.controllers.iter().any(|c| c == "pids") {
            let pids = resources
                .pids_limit
                .map_or_else(|| "max".to_string(), |p| p.to_string());
            write_file(&dir.join("pids.max"), &pids)?;
        }
        Ok(())
    }
}

impl Cgroups for V2 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
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
        let best_effort = resolve(&self.mount, &tier_path(&self.root, QosClass::BestEffort))?;
        write_file(
            &best_effort.join("cpu.weight"),
            &shares_to_weight(MIN_SHARES).to_string(),
        )
    }

    fn remove_qos_tiers(&self) -> Result<(), CgroupError> {
        remove_trees(&[resolve(&self.mount, &format!("{}/{KUBEPODS}", self.root))?])
    }

    fn create_pod(
        &self,
        qos: QosClass,
        uid: &str,
        resources: &PodResources,
    ) -> Result<(), CgroupError> {
        check_uid(uid)?;
        let dir = self.create(&pod_path(&self.root, qos, uid))?;
        self.apply(&dir, resources)
    }

    fn update_pod(
        &self,
        qos: QosClass,
        uid: &str,
        resources: &PodResources,
    ) -> Result<(), CgroupError> {
        check_uid(uid)?;
        let dir = resolve(&self.mount, &pod_path(&self.root, qos, uid))?;
        if !dir.is_dir() {
            return Err(CgroupError::NotFound { path: dir });
        }
        self.apply(&dir, resources)
    }

    fn remove_pod(&self, qos: QosClass, uid: &str) -> Result<(), CgroupError> {
        check_uid(uid)?;
        remove_trees(&[resolve(&self.mount, &pod_path(&self.root, qos, uid))?])
    }

    fn pod_exists(&self, qos: QosClass, uid: &str) -> bool {
        check_uid(uid).is_ok()
            && resolve(&self.mount, &pod_path(&self.root, qos, uid)).is_ok_and(|d| d.is_dir())
    }

    fn list_pods(&self) -> Result<Vec<(QosClass, String)>, CgroupError> {
        let mut pods = BTreeSet::new();
        pods_in(&self.mount, &self.root, &mut pods)?;
        Ok(pods.into_iter().collect())
    }

    fn oom_kill_count(&self, cgroup_path: &str) -> Result<u64, CgroupError> {
        let events = resolve(&self.mount, cgroup_path)?.join("memory.events");
        let text = read_file(&events)?;
        keyed_counter(&events, &text, "oom_kill")?.ok_or(CgroupError::Parse {
            path: events,
            content: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::kubelet::cgroups::detect;

    const UID: &str = "6f1c2a8e-1b2c-4d3e-8f9a-0b1c2d3e4f5a";

    /// A fake unified mount: `cgroup.controllers` and an empty `cgroup.subtree_control`.
    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().to_path_buf();
        std::fs::write(m.join("cgroup.controllers"), "cpuset cpu io memory pids\n").expect("write");
        std::fs::write(m.join("cgroup.subtree_control"), "").expect("write");
        (dir, m)
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    #[test]
    fn weights_match_runc() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1_000_000), 10_000);
        let mut last = 0;
        for shares in (2..=262_144).step_by(97) {
            let w = shares_to_weight(shares);
            assert!((1..=10_000).contains(&w) && w >= last, "{shares} → {w}");
            last = w;
        }
    }

    #[test]
    fn detects_unified() {
        let (_dir, m) = fixture();
        let cgroups = detect("/wlt1", &m).expect("detect");
        assert_eq!(cgroups.version(), CgroupVersion::V2);
        assert!(matches!(
            V2::new("/wlt1", &m.join("missing")),
            Err(CgroupError::Io { .. })
        ));
    }

    #[test]
    fn tiers_enable_controllers_along_the_path() {
        let (_dir, m) = fixture();
        let v2 = V2::new("/wlt1", &m).expect("v2");
        v2.ensure_qos_tiers().expect("tiers");
        let all = "+cpuset +cpu +io +memory +pids";
        for level in [
            "",
            "wlt1",
            "wlt1/kubepods",
            "wlt1/kubepods/burstable",
            "wlt1/kubepods/besteffort",
        ] {
            assert_eq!(
                read(m.join(level).join("cgroup.subtree_control")),
                all,
                "{level}"
            );
        }
        assert_eq!(read(m.join("wlt1/kubepods/besteffort/cpu.weight")), "1");
        // Already enabled: nothing is rewritten.
        std::fs::write(
            m.join("cgroup.subtree_control"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        v2.ensure_qos_tiers().expect("idempotent");
        assert_eq!(
            read(m.join("cgroup.subtree_control")),
            "cpuset cpu io memory pids"
        );
    }

    #[test]
    fn pod_files_and_values() {
        let (_dir, m) = fixture();
        let v2 = V2::new("/wlt1", &m).expect("v2");
        v2.ensure_qos_tiers().expect("tiers");
        let guaranteed = PodResources {
            cpu_shares: 1024,
            cpu_quota: Some(100_000),
            cpu_period: Some(100_000),
            memory_limit: Some(128 << 20),
            pids_limit: Some(1024),
        };
        v2.create_pod(QosClass::Guaranteed, UID, &guaranteed)
            .expect("create");
        let pod = m.join(format!("wlt1/kubepods/pod{UID}"));
        assert_eq!(read(pod.join("cpu.weight")), "100");
        assert_eq!(read(pod.join("cpu.max")), "100000 100000");
        assert_eq!(read(pod.join("memory.max")), "134217728");
        assert_eq!(read(pod.join("pids.max")), "1024");
        assert_eq!(
            read(pod.join("cgroup.subtree_control")),
            "+cpuset +cpu +io +memory +pids"
        );

        let burstable = PodResources {
            cpu_shares: 102,
            ..PodResources::unlimited()
        };
        v2.create_pod(QosClass::Burstable, "b", &burstable)
            .expect("create");
        let pod_b = m.join("wlt1/kubepods/burstable/podb");
        assert_eq!(
            read(pod_b.join("cpu.weight")),
            shares_to_weight(102).to_string()
        );
        assert_eq!(read(pod_b.join("cpu.max")), "max 100000");
        assert_eq!(read(pod_b.join("memory.max")), "max");
        assert_eq!(read(pod_b.join("pids.max")), "max");

        v2.update_pod(QosClass::Guaranteed, UID, &burstable)
            .expect("update");
        assert_eq!(read(pod.join("memory.max")), "max");
        assert!(matches!(
            v2.update_pod(QosClass::BestEffort, "nope", &burstable),
            Err(CgroupError::NotFound { .. })
        ));
        assert_eq!(
            v2.list_pods().expect("list"),
            vec![
                (QosClass::Guaranteed, UID.to_string()),
                (QosClass::Burstable, "b".to_string()),
            ]
        );
        assert!(v2.pod_exists(QosClass::Burstable, "b"));
        assert!(!v2.pod_exists(QosClass::BestEffort, "b"));
    }

    #[test]
    fn remove_pod_busy_then_gone() {
        let (_dir, m) = fixture();
        let v2 = V2::new("", &m).expect("v2");
        let pod = m.join(format!("kubepods/besteffort/pod{UID}"));
        std::fs::create_dir_all(pod.join("ctr")).expect("mkdir");
        std::fs::write(pod.join("ctr/cgroup.procs"), "7\n").expect("write");
        assert!(matches!(
            v2.remove_pod(QosClass::BestEffort, UID),
            Err(CgroupError::Busy { ref pids, .. }) if pids == &[7]
        ));
        std::fs::remove_file(pod.join("ctr/cgroup.procs")).expect("rm");
        v2.remove_pod(QosClass::BestEffort, UID).expect("remove");
        assert!(!pod.exists());
        assert!(m.join("kubepods/besteffort").is_dir());
        // The tiers go too, when empty.
        v2.remove_qos_tiers().expect("remove tiers");
        assert!(!m.join("kubepods").exists());
    }

    #[test]
    fn oom_events() {
        let (_dir, m) = fixture();
        let v2 = V2::new("/r", &m).expect("v2");
        let path = v2.container_path(QosClass::Burstable, "u", "ctr");
        let ctr = m.join("r/kubepods/burstable/podu/ctr");
        std::fs::create_dir_all(&ctr).expect("mkdir");
        std::fs::write(
            ctr.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .expect("write");
        assert_eq!(v2.oom_kill_count(&path).expect("count"), 1);
        std::fs::write(ctr.join("memory.events"), "low 0\noom_kill 0\n").expect("write");
        assert!(!v2.oom_killed(&path).expect("read"));
        std::fs::write(ctr.join("memory.events"), "low 0\n").expect("write");
        assert!(matches!(
            v2.oom_killed(&path),
            Err(CgroupError::Parse { .. })
        ));
    }
}
