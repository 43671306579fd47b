//! The shim's command line, parsed by hand (no argument-parsing crate: the shim starts once per
//! container and should start fast). See the crate docs for the options.

use std::ffi::OsString;
use std::path::PathBuf;

/// Default `--log-max-bytes`: 10 MiB, the kubelet's `containerLogMaxSize`.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default `--log-max-files`: 5, the kubelet's `containerLogMaxFiles`.
pub const DEFAULT_LOG_MAX_FILES: usize = 5;

/// The usage text printed for `--help`.
pub const USAGE: &str = "\
usage: windlass-shim --id ID --bundle DIR --state-dir DIR --log PATH
                     [--runc PATH] [--runc-root DIR] [--log-max-bytes N] [--log-max-files N]
                     [--stdin]
       windlass-shim --version";

/// What the shim was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Supervise a container.
    Run(Options),
    /// Print the version.
    Version,
    /// Print the usage.
    Help,
}

/// The options of a supervising shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The container id given to runc.
    pub id: String,
    /// The OCI bundle directory.
    pub bundle: PathBuf,
    /// Where the state files go.
    pub state_dir: PathBuf,
    /// The CRI log file.
    pub log: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's `--root`, if not its default.
    pub runc_root: Option<PathBuf>,
    /// Rotate the log once it reaches this size; 0 never rotates.
    pub log_max_bytes: u64,
    /// Keep at most this many log files, the current one included.
    pub log_max_files: usize,
    /// Give the container a stdin pipe instead of /dev/null.
    pub stdin: bool,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, String> {
    let mut id = None;
    let mut bundle = None;
    let mut state_dir = None;
    let mut log = None;
    let mut runc = None;
    let mut runc_root = None;
    let mut log_max_bytes = DEFAULT_LOG_MAX_BYTES;
    let mut log_max_files = DEFAULT_LOG_MAX_FILES;
    let mut stdin = false;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("argument {a:?} is not UTF-8"))?;
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_string(), Some(OsString::from(value)))
            }
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--id" => {
                id = Some(
                    nonempty(&name, value()?)?
                        .into_string()
                        .map_err(utf8(&name))?,
                )
            }
            "--bundle" => bundle = Some(PathBuf::from(nonempty(&name, value()?)?)),
            "--state-dir" => state_dir = Some(PathBuf::from(nonempty(&name, value()?)?)),
            "--log" => log = Some(PathBuf::from(nonempty(&name, value()?)?)),
            "--runc" => runc = Some(PathBuf::from(nonempty(&name, value()?)?)),
            "--runc-root" => runc_root = Some(PathBuf::from(nonempty(&name, value()?)?)),
            "--log-max-bytes" => log_max_bytes = number(&name, value()?)?,
            "--log-max-files" => {
                log_max_files = number(&name, value()?)?;
                if log_max_files == 0 {
                    return Err("--log-max-files must be at least 1".into());
                }
            }
            "--stdin" if inline.is_none() => stdin = true,
            "--version" | "-V" => return Ok(Invocation::Version),
            "--help" | "-h" => return Ok(Invocation::Help),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let missing = |name: &str| format!("{name} is required");
    Ok(Invocation::Run(Options {
        id: id.ok_or_else(|| missing("--id"))?,
        bundle: bundle.ok_or_else(|| missing("--bundle"))?,
        state_dir: state_dir.ok_or_else(|| missing("--state-dir"))?,
        log: log.ok_or_else(|| missing("--log"))?,
        runc: runc.unwrap_or_else(|| PathBuf::from("runc")),
        runc_root,
        log_max_bytes,
        log_max_files,
        stdin,
    }))
}

fn nonempty(name: &str, value: OsString) -> Result<OsString, String> {
    if value.is_empty() {
        Err(format!("{name} must not be empty"))
    } else {
        Ok(value)
    }
}

fn utf8(name: &str) -> impl FnOnce(OsString) -> String + '_ {
    move |v| format!("{name} {v:?} is not UTF-8")
}

fn number<T: std::str::FromStr>(name: &str, value: OsString) -> Result<T, String> {
    value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{name} needs a non-negative integer, not {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    const REQUIRED: [&str; 8] = [
        "--id",
        "c1",
        "--bundle",
        "/b",
        "--state-dir",
        "/s",
        "--log",
        "/l/0.log",
    ];

    #[test]
    fn defaults() {
        let Ok(Invocation::Run(o)) = parse(args(&REQUIRED)) else {
            panic!("should parse");
        };
        assert_eq!(
            o,
            Options {
                id: "c1".into(),
                bundle: "/b".into(),
                state_dir: "/s".into(),
                log: "/l/0.log".into(),
                runc: "runc".into(),
                runc_root: None,
                log_max_bytes: 10 * 1024 * 1024,
                log_max_files: 5,
                stdin: false,
            }
        );
    }

    #[test]
    fn every_option_in_both_forms() {
        let mut list = REQUIRED.to_vec();
        list.extend([
            "--runc=/usr/sbin/runc",
            "--runc-root",
            "/run/r",
            "--log-max-bytes=4096",
            "--log-max-files",
            "2",
            "--stdin",
        ]);
        let Ok(Invocation::Run(o)) = parse(args(&list)) else {
            panic!("should parse");
        };
        assert_eq!(o.runc, PathBuf::from("/usr/sbin/runc"));
        assert_eq!(o.runc_root, Some(PathBuf::from("/run/r")));
        assert_eq!((o.log_max_bytes, o.log_max_files, o.stdin), (4096, 2, true));
    }

    #[test]
    fn errors_name_the_argument() {
        let err = |list: &[&str]| parse(args(list)).expect_err("should fail");
        assert_eq!(err(&["--id", "c1"]), "--bundle is required");
        assert_eq!(err(&["--id"]), "--id needs a value");
        assert_eq!(err(&["--bogus"]), "unknown argument --bogus");
        assert_eq!(err(&["--id="]), "--id must not be empty");
        let mut list = REQUIRED.to_vec();
        list.extend(["--log-max-files", "0"]);
        assert_eq!(err(&list), "--log-max-files must be at least 1");
        let mut list = REQUIRED.to_vec();
        list.extend(["--log-max-bytes", "-1"]);
        assert!(err(&list).starts_with("--log-max-bytes needs a non-negative integer"));
    }

    #[test]
    fn version_and_help() {
        assert_eq!(parse(args(&["--version"])), Ok(Invocation::Version));
        assert_eq!(parse(args(&["-h"])), Ok(Invocation::Help));
    }
}
