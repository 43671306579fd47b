//! Built-in IPAM: addresses from a subnet range, one file per allocated IP.
//!
//! `<data-dir>/<ip>` is a symlink whose target, `<container id>/<ifname>`, names the owner of
//! the address (`ls -l` shows who holds what). Every operation runs under an exclusive `flock`
//! of `<data-dir>/lock`. A reservation is one `symlink(2)`, which fails if the name exists and
//! is journalled with its target: an address is either free or owned, never half-written, also
//! after a crash or a full disk, so the empty files host-local can leave
//! (containernetworking/plugins#498) cannot happen, and no `fsync` or temporary file is needed.
//! Allocation is round-robin from the last reserved address (a hint rewritten in place). ADD for
//! a (container, ifname) that already holds an address returns it; DEL of something unknown
//! succeeds; GC frees every allocation not in the valid list.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const LAST_RESERVED: &str = "last_reserved_ip.0";
const LOCK: &str = "lock";

/// Errors from the allocator.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The configuration does not describe a usable range.
    #[error("invalid IPAM configuration: {0}")]
    InvalidConfig(String),
    /// Every address in the range is taken.
    #[error("no IP addresses available in range {0}")]
    Exhausted(String),
    /// The data directory could not be read or written.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IpamError {
    let path = path.to_path_buf();
    move |source| IpamError::Io {
        action,
        path,
        source,
    }
}

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Subnet {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpamError::InvalidConfig(format!("subnet {s:?} is not an IPv4 CIDR"));
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 30 {
            return Err(IpamError::InvalidConfig(format!(
                "subnet {s} is too small for pods (/30 at most)"
            )));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    fn broadcast(&self) -> u32 {
        u32::from(self.network) | (u32::MAX >> u32::from(self.prefix))
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip >= u32::from(self.network) && ip <= self.broadcast()
    }

    /// The first host address (the conventional gateway).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
}

/// One allocated address and its owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allocation {
    /// The address.
    pub ip: Ipv4Addr,
    /// The container id that holds it.
    pub container_id: String,
    /// The interface name it is on.
    pub ifname: String,
}

/// Every allocation recorded in a pool's data directory (`<dataDir>/<network>`), sorted by
/// address; an absent directory holds none. Reads without the lock: a caller that must not race
/// ADD or DEL takes it ([`Pool`] does).
pub fn read_allocations(dir: &Path) -> Result<Vec<Allocation>, IpamError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io_err("read", dir)(e)),
    };
    for entry in entries.flatten() {
        let Some(ip) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let owner = match fs::read_link(&path) {
            Ok(target) => target.to_string_lossy().into_owned(),
            // Not a symlink: a plain file "id\nifname\n" as host-local writes them.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => fs::read_to_string(&path)
                .map_err(io_err("read", &path))?
                .replacen('\n', "/", 1),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let (id, ifname) = owner.trim().split_once('/').unwrap_or((owner.trim(), ""));
        found.push(Allocation {
            ip,
            container_id: id.to_string(),
            ifname: ifname.to_string(),
        });
    }
    found.sort();
    Ok(found)
}

/// Where and what to allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The subnet.
    pub subnet: Subnet,
    /// First allocatable address (default: the first host after the gateway).
    pub range_start: Ipv4Addr,
    /// Last allocatable address (default: the last host before broadcast).
    pub range_end: Ipv4Addr,
    /// The gateway, never handed out.
    pub gateway: Ipv4Addr,
    /// The allocation directory.
    pub data_dir: PathBuf,
}

impl Pool {
    /// A pool over `subnet` with the reference plugins' defaults for what is not given.
    pub fn new(
        subnet: Subnet,
        range_start: Option<Ipv4Addr>,
        range_end: Option<Ipv4Addr>,
        gateway: Option<Ipv4Addr>,
        data_dir: PathBuf,
    ) -> Result<Self, IpamError> {
        let gateway = gateway.unwrap_or_else(|| subnet.first_host());
        let first = u32::from(subnet.network) + 1;
        let last = subnet.broadcast() - 1;
        let range_start = range_start.unwrap_or(Ipv4Addr::from(first));
        let range_end = range_end.unwrap_or(Ipv4Addr::from(last));
        for (name, ip) in [
            ("rangeStart", range_start),
            ("rangeEnd", range_end),
            ("gateway", gateway),
        ] {
            let v = u32::from(ip);
            if !(first..=last).contains(&v) {
                return Err(IpamError::InvalidConfig(format!(
                    "{name} {ip} is not a host address of {subnet}"
                )));
            }
        }
        if u32::from(range_start) > u32::from(range_end) {
            return Err(IpamError::InvalidConfig(format!(
                "rangeStart {range_start} is after rangeEnd {range_end}"
            )));
        }
        Ok(Pool {
            subnet,
            range_start,
            range_end,
            gateway,
            data_dir,
        })
    }

    fn candidates(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (u32::from(self.range_start)..=u32::from(self.range_end))
            .map(Ipv4Addr::from)
            .filter(move |ip| *ip != self.gateway)
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, IpamError> {
        fs::create_dir_all(&self.data_dir).map_err(io_err("create", &self.data_dir))?;
        let path = self.data_dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("lock", &path)(e.into()))
    }

    /// Every allocation as (ip, container id, ifname).
    fn allocations(&self) -> Result<Vec<(Ipv4Addr, String, String)>, IpamError> {
        Ok(read_allocations(&self.data_dir)?
            .into_iter()
            .map(|a| (a.ip, a.container_id, a.ifname))
            .collect())
    }

    /// Reserves `ip` for `owner` unless it is taken; `Ok(false)` when it is.
    fn reserve(&self, ip: Ipv4Addr, owner: &str) -> Result<bool, IpamError> {
        let path = self.data_dir.join(ip.to_string());
        match std::os::unix::fs::symlink(owner, &path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("reserve", &path)(e)),
        }
    }

    /// Records the round-robin hint in place, padded to a fixed width so no truncation is
    /// needed; a torn write only costs the hint (allocation then starts from the range start).
    fn remember_last(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        use std::os::unix::fs::FileExt;
        let path = self.data_dir.join(LAST_RESERVED);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        file.write_all_at(format!("{:<15}", ip.to_string()).as_bytes(), 0)
            .map_err(io_err("write", &path))
    }

    /// The address of (`container_id`, `ifname`): the one it holds, or a new one.
    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<Ipv4Addr, IpamError> {
        let _lock = self.lock()?;
        let allocations = self.allocations()?;
        if let Some((ip, ..)) = allocations
            .iter()
            .find(|(_, id, ifn)| id == container_id && ifn == ifname)
        {
            return Ok(*ip);
        }
        let last_path = self.data_dir.join(LAST_RESERVED);
        let last: Option<Ipv4Addr> = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let mut candidates: Vec<Ipv4Addr> = self.candidates().collect();
        // Round-robin: start after the last reserved address.
        if let Some(last) = last
            && let Some(pos) = candidates.iter().position(|ip| *ip == last)
        {
            candidates.rotate_left(pos + 1);
        }
        let owner = format!("{container_id}/{ifname}");
        for ip in candidates {
            if self.reserve(ip, &owner)? {
                self.remember_last(ip)?;
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(format!(
            "{}-{}",
            self.range_start, self.range_end
        )))
    }

    /// The address (`container_id`, `ifname`) holds, if any.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, id, ifn)| id == container_id && ifn == ifname)
            .map(|(ip, ..)| ip))
    }

    /// Frees the address of (`container_id`, `ifname`); nothing to free is not an error.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<(), IpamError> {
        let _lock = self.lock()?;
        for (ip, id, ifn) in self.allocations()? {
            if id == container_id && ifn == ifname {
                let path = self.data_dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &path)(e)),
                }
            }
        }
        Ok(())
    }

    /// Frees every allocation whose (container id, ifname) is not in `valid`; returns how many.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<usize, IpamError> {
        let _lock = self.lock()?;
        let mut freed = 0;
        for (ip, id, ifn) in self.allocations()? {
            if !valid.iter().any(|(v_id, v_if)| *v_id == id && *v_if == ifn) {
                let path = self.data_dir.join(ip.to_string());
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                freed += 1;
            }
        }
        Ok(freed)
    }

    /// CNI STATUS: ready unless the range is exhausted or the data dir is not writable.
    pub fn status(&self) -> Result<(), IpamError> {
        let _lock = self.lock()?;
        let probe = self.data_dir.join(".status-probe");
        fs::write(&probe, b"ok").map_err(io_err("write", &probe))?;
        let _ = fs::remove_file(&probe);
        let taken = self.allocations()?.len();
        if taken >= self.candidates().count() {
            return Err(IpamError::Exhausted(format!(
                "{}-{}",
                self.range_start, self.range_end
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(dir: &Path, cidr: &str) -> Pool {
        Pool::new(
            cidr.parse().expect("cidr"),
            None,
            None,
            None,
            dir.to_path_buf(),
        )
        .expect("pool")
    }

    #[test]
    fn config_defaults_and_errors_follow_the_reference_plugins() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = pool(dir.path(), "10.244.1.7/24");
        assert_eq!(p.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(p.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(p.range_start, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(p.range_end, Ipv4Addr::new(10, 244, 1, 254));
        assert!(matches!(
            "10.244.1.0".parse::<Subnet>(),
            Err(IpamError::InvalidConfig(_))
        ));
        let outside = Pool::new(
            "10.244.1.0/24".parse().expect("cidr"),
            Some(Ipv4Addr::new(10, 0, 0, 5)),
            None,
            None,
            dir.path().into(),
        );
        assert!(matches!(outside, Err(IpamError::InvalidConfig(_))));
    }

    #[test]
    fn allocation_is_idempotent_round_robin_and_skips_the_gateway() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = pool(dir.path(), "10.244.1.0/29"); // hosts .1-.6, gateway .1
        let a = p.allocate("ctr-a", "eth0").expect("a");
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(
            p.allocate("ctr-a", "eth0").expect("again"),
            a,
            "same container and ifname, same address"
        );
        let b = p.allocate("ctr-b", "eth0").expect("b");
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 3));
        p.release("ctr-a", "eth0").expect("release");
        p.release("ctr-a", "eth0").expect("releasing twice is fine");
        p.release("unknown", "eth0")
            .expect("releasing the unknown is fine");
        // Round-robin: the freed .2 is not reused before the rest of the range.
        assert_eq!(
            p.allocate("ctr-c", "eth0").expect("c"),
            Ipv4Addr::new(10, 244, 1, 4)
        );
        let record = fs::read_link(dir.path().join("10.244.1.3")).expect("record");
        assert_eq!(record, Path::new("ctr-b/eth0"));
        let stray: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(stray.is_empty(), "no temporary files left behind");
    }

    #[test]
    fn exhaustion_status_and_gc() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = pool(dir.path(), "10.244.1.0/30"); // hosts .1 (gateway) and .2
        p.status().expect("ready while addresses remain");
        assert_eq!(
            p.allocate("one", "eth0").expect("one"),
            Ipv4Addr::new(10, 244, 1, 2)
        );
        assert!(matches!(
            p.allocate("two", "eth0"),
            Err(IpamError::Exhausted(_))
        ));
        assert!(matches!(p.status(), Err(IpamError::Exhausted(_))));
        assert_eq!(
            p.gc(&[("one".into(), "eth0".into())]).expect("gc"),
            0,
            "valid attachments stay"
        );
        assert_eq!(p.gc(&[]).expect("gc"), 1);
        p.allocate("two", "eth0").expect("room again after gc");
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = pool(dir.path(), "10.244.1.0/24");
        let ips: Vec<Ipv4Addr> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let p = p.clone();
                    scope.spawn(move || {
                        (0..20)
                            .map(|i| p.allocate(&format!("c{t}-{i}"), "eth0").expect("allocate"))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ips.len(), "160 allocations, 160 addresses");
    }
}
