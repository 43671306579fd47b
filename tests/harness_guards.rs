//! The harness cleans up: namespaces after a panic, cgroups with processes in them, pin
//! directories with pins in them.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use windlass_tests::bpffs::PinDir;
use windlass_tests::cgroup::TestCgroup;
use windlass_tests::prefix;
use windlass_tests::topology::Topology;

#[test]
fn topology_is_removed_after_a_panic() {
    let names = Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let topo = Topology::builder()
            .nodes(2)
            .pods_per_node(2)
            .build()
            .expect("build topology");
        *names.lock().expect("names lock") = topo.namespace_names();
        panic!("test failure while the topology is up");
    });
    assert!(result.is_err(), "the closure panicked");
    let names = names.into_inner().expect("names lock");
    assert_eq!(names.len(), 2 * 2 + 2 + 1, "pods + nodes + fabric");
    let left: Vec<_> = names
        .iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .collect();
    assert!(left.is_empty(), "namespaces left after panic: {left:?}");
}

#[test]
fn exec_runs_inside_the_namespace() {
    windlass_tests::prereq::require_tool("ip");
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("build");
    let pod = topo.pod(0, 0);
    let out = pod
        .ns
        .exec(Command::new("ip").args(["-o", "-4", "addr", "show", "dev", "eth0"]))
        .expect("exec in pod namespace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("inet {}/32", pod.ip)),
        "pod address seen from inside: {text}"
    );
}

#[test]
fn cgroup_guard_kills_its_processes_and_removes_itself() {
    let name = prefix::unique();
    let cgroup = TestCgroup::create(&name).expect("create cgroup");
    let path = cgroup.path().to_path_buf();
    let mut child = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep");
    cgroup
        .add_process(child.id())
        .expect("move child into cgroup");
    assert_eq!(cgroup.processes().expect("list procs"), vec![child.id()]);
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).expect("read");
    assert!(
        own.contains(&format!("::/{name}")),
        "child is in the v2 cgroup: {own}"
    );

    drop(cgroup);
    assert!(!path.exists(), "cgroup directory removed");
    let status = child.wait().expect("reap child");
    assert!(
        !status.success(),
        "child was killed, not left running: {status:?}"
    );
}

#[test]
fn pin_dir_is_removed_with_its_contents() {
    let name = prefix::unique();
    let dir = PinDir::create(&name).expect("create pin dir");
    let path = dir.path().to_path_buf();
    std::fs::create_dir(path.join("sub")).expect("bpffs allows directories");
    assert!(path.join("sub").is_dir());
    drop(dir);
    assert!(!path.exists(), "pin directory removed");
}
