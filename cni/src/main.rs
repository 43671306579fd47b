//! `windlass-cni`: the CNI plugin binary. The protocol (ADD, DEL, CHECK, VERSION, STATUS, GC)
//! arrives with the CNI issue; until then it answers every command with CNI error 50
//! ("plugin not available") as the spec's JSON, so a runtime that calls it fails clearly.

use std::io::Write;

fn main() {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let error = serde_json::json!({
        "cniVersion": "1.1.0",
        "code": 50,
        "msg": "windlass-cni is not implemented yet",
        "details": format!("CNI_COMMAND={command} is not supported by this build"),
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{error}");
    std::process::exit(1);
}
