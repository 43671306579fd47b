//! CNI errors: the spec's numeric codes and the JSON a plugin prints on stdout when it fails.

use serde_json::{Value, json};

use crate::version::Version;

/// A CNI error as the spec defines it: a code, a short message and details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    /// The spec's error code (1-99 well known, 100+ plugin-specific).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// A longer explanation.
    pub details: String,
}

impl CniError {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (message names the key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist; the runtime need not clean up.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid environment variables (`CNI_COMMAND`, `CNI_CONTAINERID`, ...).
    pub const INVALID_ENV: u32 = 4;
    /// An I/O failure, such as reading the configuration from stdin.
    pub const IO: u32 = 5;
    /// The content could not be decoded (the configuration is not JSON).
    pub const DECODE: u32 = 6;
    /// The network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition; the runtime should retry.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin is not available (no addresses left, state not writable).
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin is available for some networks only.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Plugin-specific: no address is left in the range.
    pub const NO_ADDRESSES: u32 = 100;
    /// Plugin-specific: a kernel request (netlink, namespace) failed.
    pub const KERNEL: u32 = 101;
    /// Plugin-specific: CHECK found the container's network not as the result says.
    pub const CHECK_FAILED: u32 = 102;

    /// An error with `code`, `msg` and `details`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error as the JSON object printed on stdout, labelled with `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let mut out = json!({
            "cniVersion": version.as_str(),
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            out["details"] = Value::String(self.details.clone());
        }
        out
    }
}

impl From<crate::netlink::NetlinkError> for CniError {
    fn from(e: crate::netlink::NetlinkError) -> Self {
        CniError::new(CniError::KERNEL, "a netlink request failed", chain(&e))
    }
}

/// Formats an error with its chain of causes, for `details`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
