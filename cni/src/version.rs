//! The CNI spec versions this plugin speaks, and what each allows.

/// A supported `cniVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.3.0: the first version with the current result shape.
    V0_3_0,
    /// 0.3.1.
    V0_3_1,
    /// 0.4.0: adds CHECK.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds STATUS and GC, interface `mtu` in results.
    V1_1_0,
}

/// Every version this plugin accepts, oldest first (what VERSION reports).
pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

impl Version {
    /// The newest version, used where no configuration names one.
    pub const LATEST: Version = Version::V1_1_0;

    /// The version string as configurations spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a version string; `None` when it is not one this plugin speaks.
    pub fn parse(s: &str) -> Option<Version> {
        SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether CHECK exists in this version (0.4.0 and later).
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// Whether STATUS and GC exist in this version (1.1.0 and later).
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Every supported version as strings, for VERSION and error details.
    pub fn supported_strings() -> Vec<&'static str> {
        SUPPORTED.iter().map(|v| v.as_str()).collect()
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
