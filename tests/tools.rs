//! The client tools `cargo xtask deps` provides are the ones the other tests run against.

use std::process::Command;

use windlass_tests::prereq::kubectls;

#[test]
fn every_kubectl_under_test_runs() {
    let all = kubectls();
    for kubectl in &all {
        let out = Command::new(kubectl)
            .args(["version", "--client"])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", kubectl.display()));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} version --client failed",
            kubectl.display()
        );
        assert!(
            text.contains("Client Version"),
            "{}: {text}",
            kubectl.display()
        );
    }
    let local = String::from_utf8_lossy(
        &Command::new(&all[0])
            .args(["version", "--client"])
            .output()
            .expect("run project-local kubectl")
            .stdout,
    )
    .to_string();
    assert!(
        local.contains("v1.20"),
        "project-local kubectl is Debian's 1.20: {local}"
    );
}
