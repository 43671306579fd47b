//! Per-test name prefixes: `wlt` + 5 random hex digits. Every namespace, link, cgroup and pin
//! directory a test creates starts with its prefix, so parallel tests never collide and the leak
//! check can find leftovers.

use std::io::Read;

/// What every test-created object's name starts with.
pub const TEST_PREFIX: &str = "wlt";

/// A fresh random prefix such as `wlt3fa9c` (8 characters, leaving room in 15-byte link names).
pub fn unique() -> String {
    let mut bytes = [0u8; 4];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    let random = if filled {
        u32::from_le_bytes(bytes)
    } else {
        // /dev/urandom always exists on Linux; fall back to pid and time rather than fail.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        std::process::id().rotate_left(13) ^ nanos
    };
    format!("{TEST_PREFIX}{:05x}", random & 0xf_ffff)
}
