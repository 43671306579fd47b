//! `windlass-shim`: the per-container supervisor (conmon-like) that runs `runc create/start`,
//! holds the container's stdio, writes CRI-format logs, reaps it and records its exit status.
//! It arrives with the kubelet issue; this build only reports its version.

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--version") | Some("version") => {
            println!("windlass-shim {}", env!("CARGO_PKG_VERSION"));
        }
        _ => {
            eprintln!("windlass-shim: container supervision is not implemented in this build");
            std::process::exit(2);
        }
    }
}
