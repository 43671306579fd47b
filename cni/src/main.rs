//! `windlass-cni`: the CNI plugin binary. Reads `CNI_*` from the environment and the network
//! configuration from stdin, prints the result or a CNI error as JSON on stdout, and exits
//! non-zero on error. Everything else lives in the library.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => windlass_cni::plugin::run(|key| std::env::var(key).ok(), &stdin),
        Err(e) => windlass_cni::plugin::Outcome {
            stdout: Some(
                windlass_cni::error::CniError::new(
                    windlass_cni::error::CniError::IO,
                    "failed to read the network configuration",
                    e.to_string(),
                )
                .to_json(windlass_cni::version::Version::LATEST),
            ),
            success: false,
        },
    };
    if let Some(json) = &outcome.stdout {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{json}");
        let _ = stdout.flush();
    }
    std::process::exit(if outcome.success { 0 } else { 1 });
}
