//! Loads `ebpf/proxy.bpf.c` with its maps pinned under the node's pin dir (re-used when already
//! there), and attaches its programs through pinned links (`<pin dir>/links/<name>`), so the
//! datapath keeps working while the agent is down. A new agent attaches its own links first and
//! then renames them over the old pins, which detaches the old programs with no gap.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use aya::maps::{MapData, MapError};
use aya::programs::links::{CgroupAttachMode, FdLink};
use aya::programs::{CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader};

use crate::ebpf::objects;

/// The four socket programs and their link pin names.
const SOCKET_PROGRAMS: &[&str] = &[
    "wl_sock4_connect",
    "wl_sock4_sendmsg",
    "wl_sock4_recvmsg",
    "wl_sock4_getpeername",
];

/// tc program for packets from pods (ingress of a pod veth's host side).
pub const TC_FROM_POD: &str = "wl_tc_from_pod";
/// tc program for packets from other nodes (ingress of the uplink).
pub const TC_FROM_UPLINK: &str = "wl_tc_from_uplink";

/// Prefix of a link pin being put in place.
const STAGING_PREFIX: &str = "new-";

/// Prefix of a pod veth's link pin (`tc-pod-<ifname>`).
pub const POD_LINK_PREFIX: &str = "tc-pod-";

/// Errors of the datapath loader.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded (verifier, maps, pins).
    #[error("failed to load proxy.bpf.o with its maps pinned under {dir}")]
    Load {
        /// The pin dir.
        dir: PathBuf,
        /// aya's error.
        #[source]
        source: Box<EbpfError>,
    },
    /// A program is missing or has another type.
    #[error("program {0} missing from proxy.bpf.o")]
    MissingProgram(String),
    /// A map is missing.
    #[error("map {0} missing from proxy.bpf.o")]
    MissingMap(String),
    /// Loading or attaching a program failed.
    #[error("failed to attach {program} to {target}")]
    Attach {
        /// The program.
        program: String,
        /// The cgroup or interface.
        target: String,
        /// aya's error (boxed: it is large and this is not a hot path).
        #[source]
        source: Box<ProgramError>,
    },
    /// A link is not a bpf_link (kernels before 5.7 and tc before 6.6 cannot pin one).
    #[error("the link of {program} cannot be pinned")]
    Link {
        /// The program.
        program: String,
        /// aya's error.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// A link could not be pinned or moved into place.
    #[error("failed to pin the link of {program} at {path}")]
    Pin {
        /// The program.
        program: String,
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A map operation failed.
    #[error(transparent)]
    Map(#[from] MapError),
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The loaded proxy object and where its pins live.
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    dir: PathBuf,
    /// Programs already loaded into the kernel (each is loaded once, attached many times).
    loaded: HashSet<String>,
}

impl Datapath {
    /// Loads the programs, creating or re-using the maps pinned in `dir`.
    pub fn load(dir: &Path) -> Result<Self, DatapathError> {
        let links = dir.join("links");
        std::fs::create_dir_all(&links).map_err(|source| DatapathError::Io {
            what: "cannot create",
            path: links.clone(),
            source,
        })?;
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(objects::PROXY)
            .map_err(|source| DatapathError::Load {
                dir: dir.to_path_buf(),
                source: Box::new(source),
            })?;
        Ok(Datapath {
            ebpf,
            dir: dir.to_path_buf(),
            loaded: HashSet::new(),
        })
    }

    /// Takes a map out of the object (each map once).
    pub fn take_map(&mut self, name: &str) -> Result<aya::maps::Map, DatapathError> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| DatapathError::MissingMap(name.to_string()))
    }

    /// Attaches the socket programs to the cgroup v2 directory `cgroup`, replacing links an
    /// earlier agent pinned.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let fd = File::open(cgroup).map_err(|source| DatapathError::Io {
            what: "cannot open the cgroup",
            path: cgroup.to_path_buf(),
            source,
        })?;
        let target = cgroup.display().to_string();
        for &name in SOCKET_PROGRAMS {
            self.attach_pinned(name, &target, name, CgroupSockAddr::load, |prog| {
                // A cgroup bpf_link is always multi-attach (the kernel wants no flags with
                // it): the old agent's program stays attached until its pin is replaced.
                let id = prog.attach(&fd, CgroupAttachMode::Single)?;
                prog.take_link(id)
            })?;
        }
        Ok(())
    }

    /// Attaches tc program `program` to the ingress of `iface`, pinned as `links/<pin_name>`.
    pub fn attach_tc(
        &mut self,
        program: &str,
        iface: &str,
        pin_name: &str,
    ) -> Result<(), DatapathError> {
        self.attach_pinned(program, iface, pin_name, SchedClassifier::load, |prog| {
            let id = prog.attach(iface, TcAttachType::Ingress)?;
            prog.take_link(id)
        })
    }

    /// Loads `program` once, attaches it with `attach` and pins the link as `links/<pin_name>`.
    fn attach_pinned<P, L>(
        &mut self,
        program: &str,
        target: &str,
        pin_name: &str,
        load: fn(&mut P) -> Result<(), ProgramError>,
        attach: impl FnOnce(&mut P) -> Result<L, ProgramError>,
    ) -> Result<(), DatapathError>
    where
        for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
        L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
    {
        let attach_err = |source| DatapathError::Attach {
            program: program.to_string(),
            target: target.to_string(),
            source: Box::new(source),
        };
        let prog: &mut P = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| DatapathError::MissingProgram(program.to_string()))?
            .try_into()
            .map_err(attach_err)?;
        if !self.loaded.contains(program) {
            load(prog).map_err(attach_err)?;
            self.loaded.insert(program.to_string());
        }
        let link: FdLink = attach(prog)
            .map_err(attach_err)?
            .try_into()
            .map_err(|source| DatapathError::Link {
                program: program.to_string(),
                source,
            })?;
        self.pin_replacing(program, link, pin_name)
    }

    /// Removes a link pin (detaching its program unless something else holds the link).
    pub fn unpin(&self, pin_name: &str) {
        let _ = std::fs::remove_file(self.dir.join("links").join(pin_name));
    }

    /// The names of the pinned links.
    pub fn pinned_links(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("links"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| !n.starts_with(STAGING_PREFIX))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Pins `link` at `links/new-<pin_name>` and renames it over `links/<pin_name>`; the old
    /// link, if any, loses its last reference and detaches.
    fn pin_replacing(
        &self,
        program: &str,
        link: FdLink,
        pin_name: &str,
    ) -> Result<(), DatapathError> {
        let path = self.dir.join("links").join(pin_name);
        // bpffs refuses names with a dot.
        let staging = self
            .dir
            .join("links")
            .join(format!("{STAGING_PREFIX}{pin_name}"));
        let _ = std::fs::remove_file(&staging);
        let pinned = link.pin(&staging).map_err(|e| DatapathError::Pin {
            program: program.to_string(),
            path: staging.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        std::fs::rename(&staging, &path).map_err(|source| DatapathError::Pin {
            program: program.to_string(),
            path: path.clone(),
            source,
        })?;
        // The pin holds the link now; closing our descriptor does not detach it.
        drop(pinned);
        Ok(())
    }
}

/// Opens a pinned map of the node's pin dir (for `windlass proxy dump` and the benchmark).
pub fn open_pinned(dir: &Path, name: &str) -> Result<MapData, DatapathError> {
    MapData::from_pin(dir.join(name)).map_err(DatapathError::Map)
}
