//! Finds what tests left behind: namespaces, root-namespace links, cgroups and BPF pins whose
//! names carry the test prefix (`wlt`) or, for pins, the product's `windlass` directory.

use std::path::Path;

use crate::prefix::TEST_PREFIX;

/// Every leftover found, as a human-readable line each (empty when the machine is clean).
pub fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(names) = windlass_cni::netns::list() {
        found.extend(
            names
                .into_iter()
                .filter(|n| n.starts_with(TEST_PREFIX))
                .map(|n| format!("network namespace /run/netns/{n}")),
        );
    }
    // /sys/class/net lists the links of the namespace sysfs was mounted in: the root one.
    found.extend(
        entries(Path::new("/sys/class/net"))
            .filter(|n| n.starts_with(TEST_PREFIX))
            .map(|n| format!("link {n} in the root network namespace")),
    );
    // Every cgroup hierarchy: the v1 controllers and the v2 tree.
    for hierarchy in entries(Path::new("/sys/fs/cgroup")) {
        let dir = Path::new("/sys/fs/cgroup").join(&hierarchy);
        found.extend(
            entries(&dir)
                .filter(|n| n.starts_with(TEST_PREFIX))
                .map(|n| format!("cgroup {}", dir.join(n).display())),
        );
    }
    found.extend(
        entries(Path::new(crate::bpffs::BPFFS))
            .filter(|n| n.starts_with(TEST_PREFIX) || n.starts_with("windlass"))
            .map(|n| format!("BPF pin {}/{n}", crate::bpffs::BPFFS)),
    );
    found
}

fn entries(dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
}
