//! The kubelet's QoS cgroups on this machine's real hierarchy (cgroup v1 controllers, plus the
//! hybrid `unified` v2 one), under a per-test root such as `/wlt3fa9c`: the tiers, a Burstable
//! and a Guaranteed pod with the values kubelet writes, a container cgroup whose process keeps
//! the pod busy (never killed by `remove_pod`), an OOM kill seen through the memory counters,
//! and removal that leaves nothing in any hierarchy. A guard removes the root from every
//! hierarchy on drop, also after a panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use windlass::node::kubelet::cgroups::{self, CgroupError, CgroupVersion, PodResources, QosClass};
use windlass_tests::prefix;
use windlass_tests::prereq::require_root;
use windlass_tests::wait::eventually;

const MOUNT: &str = "/sys/fs/cgroup";
const MI: i64 = 1 << 20;

/// Owns the test's cgroup root and the processes it started: on drop it kills them and removes
/// the root from every hierarchy.
struct RootGuard {
    root: String,
    children: Vec<Child>,
}

impl RootGuard {
    fn new() -> Self {
        RootGuard {
            root: format!("/{}", prefix::unique()),
            children: Vec::new(),
        }
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = windlass_tests::cgroup::remove_everywhere(&self.root) {
            eprintln!("could not clean up cgroup root {}: {e}", self.root);
        }
    }
}

/// Every hierarchy directory under the mount (v1 controllers, `systemd`, `unified`).
fn hierarchies() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(MOUNT)
        .expect("list /sys/fs/cgroup")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn at(hierarchy: &str, cgroup_path: &str) -> PathBuf {
    Path::new(MOUNT)
        .join(hierarchy)
        .join(cgroup_path.trim_start_matches('/'))
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({ "metadata": { "name": "p" }, "spec": spec }))
        .expect("a valid pod")
}

/// Makes a container cgroup below the pod in the hierarchies runc would use for a process
/// (cpu, memory, and the others), as runc does from `linux.cgroupsPath`.
fn make_container_cgroup(cgroup_path: &str) {
    for h in hierarchies() {
        let name = h.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let dir = h.join(cgroup_path.trim_start_matches('/'));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        if name == "cpuset" {
            let parent = dir.parent().expect("a parent");
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = read(parent.join(file));
                std::fs::write(dir.join(file), value).expect("copy cpuset");
            }
        }
    }
}

/// Starts `sh -c script` waiting for a line on stdin, moves it into `cgroup_path` of the memory
/// hierarchy, and lets it go.
fn start_in_memory_cgroup(guard: &mut RootGuard, cgroup_path: &str, script: &str) -> u32 {
    let mut child = Command::new("sh")
        .args(["-c", &format!("read _; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    std::fs::write(
        at("memory", cgroup_path).join("cgroup.procs"),
        pid.to_string(),
    )
    .expect("move the process into the container cgroup");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("release the process");
    guard.children.push(child);
    pid
}

#[test]
fn qos_cgroups_on_the_real_hierarchy() {
    require_root();
    let mut guard = RootGuard::new();
    let root = guard.root.clone();

    assert!(
        !Path::new(MOUNT).join("cgroup.controllers").exists(),
        "this test is written for the v1 (hybrid) hierarchy of the test machine"
    );
    let cg = cgroups::detect(&root, Path::new(MOUNT)).expect("detect");
    assert_eq!(
        cg.version(),
        CgroupVersion::V1,
        "hybrid hosts use v1, as runc"
    );

    // The tiers, in every hierarchy.
    cg.ensure_qos_tiers().expect("create the QoS tiers");
    cg.ensure_qos_tiers().expect("tiers are idempotent");
    for h in hierarchies() {
        for tier in ["kubepods", "kubepods/burstable", "kubepods/besteffort"] {
            let dir = h.join(root.trim_start_matches('/')).join(tier);
            assert!(dir.is_dir(), "{} missing", dir.display());
        }
    }
    assert_eq!(
        read(at("cpu", &format!("{root}/kubepods/besteffort")).join("cpu.shares")),
        "2"
    );

    // A Burstable pod: CPU requests, memory limits on every container, no CPU limits.
    let burstable = pod(serde_json::json!({ "containers": [
        { "name": "a", "resources": {
            "requests": { "cpu": "250m", "memory": "32Mi" }, "limits": { "memory": "64Mi" } } },
        { "name": "b", "resources": {
            "requests": { "cpu": "0.25" }, "limits": { "memory": "64Mi" } } },
    ]}));
    assert_eq!(QosClass::from_pod(&burstable), Ok(QosClass::Burstable));
    let b_res = PodResources::for_pod(&burstable, None).expect("pod resources");
    let b_uid = "0b1c2d3e-burstable";
    cg.create_pod(QosClass::Burstable, b_uid, &b_res)
        .expect("create the Burstable pod");
    let b_path = cg.pod_path(QosClass::Burstable, b_uid);
    assert_eq!(b_path, format!("{root}/kubepods/burstable/pod{b_uid}"));
    assert_eq!(read(at("cpu", &b_path).join("cpu.shares")), "512");
    assert_eq!(read(at("cpu", &b_path).join("cpu.cfs_quota_us")), "-1");
    assert_eq!(
        read(at("memory", &b_path).join("memory.limit_in_bytes")),
        (128 * MI).to_string()
    );
    assert_eq!(read(at("pids", &b_path).join("pids.max")), "max");
    assert_eq!(
        read(at("cpuset", &b_path).join("cpuset.cpus")),
        read(Path::new(MOUNT).join("cpuset/cpuset.cpus")),
        "cpuset copied down from the root"
    );

    // A Guaranteed pod, directly under kubepods, with a pids limit.
    let guaranteed = pod(serde_json::json!({ "containers": [
        { "name": "a", "resources": { "limits": { "cpu": "500m", "memory": "64Mi" } } },
    ]}));
    assert_eq!(QosClass::from_pod(&guaranteed), Ok(QosClass::Guaranteed));
    let g_res = PodResources::for_pod(&guaranteed, Some(100)).expect("pod resources");
    let g_uid = "0b1c2d3e-guaranteed";
    cg.create_pod(QosClass::Guaranteed, g_uid, &g_res)
        .expect("create the Guaranteed pod");
    let g_path = cg.pod_path(QosClass::Guaranteed, g_uid);
    assert_eq!(g_path, format!("{root}/kubepods/pod{g_uid}"));
    assert_eq!(read(at("cpu", &g_path).join("cpu.shares")), "512");
    assert_eq!(read(at("cpu", &g_path).join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(at("cpu", &g_path).join("cpu.cfs_quota_us")), "50000");
    assert_eq!(
        read(at("memory", &g_path).join("memory.limit_in_bytes")),
        (64 * MI).to_string()
    );
    assert_eq!(read(at("pids", &g_path).join("pids.max")), "100");

    // An update lowers the memory limit in place.
    let smaller = PodResources {
        memory_limit: Some(32 * MI),
        ..g_res
    };
    cg.update_pod(QosClass::Guaranteed, g_uid, &smaller)
        .expect("update the Guaranteed pod");
    assert_eq!(
        read(at("memory", &g_path).join("memory.limit_in_bytes")),
        (32 * MI).to_string()
    );

    assert!(cg.pod_exists(QosClass::Burstable, b_uid));
    assert!(!cg.pod_exists(QosClass::BestEffort, b_uid));
    assert_eq!(
        cg.list_pods().expect("list pods"),
        vec![
            (QosClass::Guaranteed, g_uid.to_string()),
            (QosClass::Burstable, b_uid.to_string()),
        ]
    );

    // A container with a sleeping process: the pod is busy, and nothing is killed or removed.
    let ctr = cg.container_path(QosClass::Burstable, b_uid, "sleeper");
    make_container_cgroup(&ctr);
    let pid = start_in_memory_cgroup(&mut guard, &ctr, "exec sleep 1000");
    match cg.remove_pod(QosClass::Burstable, b_uid) {
        Err(CgroupError::Busy { path, pids }) => {
            assert_eq!(path, at("memory", &ctr));
            assert_eq!(pids, vec![pid]);
        }
        other => panic!("expected the pod to be busy, got {other:?}"),
    }
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "the process is not killed"
    );
    for h in hierarchies() {
        assert!(h.join(ctr.trim_start_matches('/')).is_dir());
    }
    assert!(!cg.oom_killed(&ctr).expect("read the OOM counter"));

    // An OOM kill in another container of the Guaranteed pod shows in its counter.
    let hog = cg.container_path(QosClass::Guaranteed, g_uid, "hog");
    make_container_cgroup(&hog);
    std::fs::write(
        at("memory", &hog).join("memory.limit_in_bytes"),
        (16 * MI).to_string(),
    )
    .expect("limit the hog");
    start_in_memory_cgroup(
        &mut guard,
        &hog,
        "x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    let status = guard
        .children
        .last_mut()
        .expect("the hog")
        .wait()
        .expect("wait for the hog");
    assert!(!status.success(), "the hog should be OOM-killed");
    assert!(cg.oom_killed(&hog).expect("read the OOM counter"));
    assert!(cg.oom_kill_count(&hog).expect("count") >= 1);

    // Stop the sleeper: now everything goes, in every hierarchy.
    let sleeper = guard.children.first_mut().expect("the sleeper");
    sleeper.kill().expect("kill the sleeper");
    sleeper.wait().expect("reap the sleeper");
    eventually(
        "the sleeper to leave its cgroup",
        Duration::from_secs(10),
        || {
            read(at("memory", &ctr).join("cgroup.procs"))
                .is_empty()
                .then_some(())
        },
    );
    // The OOM killer takes one process of the hog's pipeline; the others (head writing into a
    // closed pipe) leave a moment later.
    eventually(
        "the hog's pipeline to leave its cgroup",
        Duration::from_secs(10),
        || {
            read(at("memory", &hog).join("cgroup.procs"))
                .is_empty()
                .then_some(())
        },
    );
    cg.remove_pod(QosClass::Burstable, b_uid)
        .expect("remove the Burstable pod");
    cg.remove_pod(QosClass::Guaranteed, g_uid)
        .expect("remove the Guaranteed pod");
    cg.remove_pod(QosClass::Guaranteed, g_uid)
        .expect("removing a removed pod is fine");
    for h in hierarchies() {
        for path in [&b_path, &g_path] {
            let dir = h.join(path.trim_start_matches('/'));
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
    assert_eq!(cg.list_pods().expect("list pods"), vec![]);

    cg.remove_qos_tiers().expect("remove the tiers");
    for h in hierarchies() {
        let dir = h.join(root.trim_start_matches('/')).join("kubepods");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
