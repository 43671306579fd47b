//! The tc packet counter (`ebpf/tc_counter.bpf.c`): loads it, attaches it to an interface's
//! ingress and egress, pins its map so counts survive a reload, and reads the totals.

#![allow(unsafe_code)] // `aya::Pod` is an unsafe marker trait; see the SAFETY note below

use std::path::{Path, PathBuf};

use aya::maps::{MapError, PerCpuArray};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, tc};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfError, EbpfLoader};

use super::objects;

/// Name of the per-CPU counter map in the object (`wl_counters`).
pub const MAP_NAME: &str = "wl_counters";

/// Rust twin of `struct wl_counter` in `ebpf/counter.h`: packets and bytes in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (`skb->len`).
    pub bytes: u64,
}

// SAFETY: `Counter` is `repr(C)`, made only of `u64`s with no padding, so every bit pattern the
// kernel writes is a valid value.
unsafe impl aya::Pod for Counter {}

/// Twin of `enum wl_direction`: the map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Direction {
    /// Packets arriving on the interface (`WL_DIR_INGRESS`).
    Ingress = 0,
    /// Packets leaving the interface (`WL_DIR_EGRESS`).
    Egress = 1,
}

/// Errors from loading, attaching or reading the counter.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// The object could not be loaded (verifier, map creation or pinning).
    #[error("failed to load the tc counter with its map pinned under {pin_dir}")]
    Load {
        /// The pin directory asked for.
        pin_dir: PathBuf,
        /// aya's error (boxed: it is large and this is not a hot path).
        #[source]
        source: Box<EbpfError>,
    },
    /// A program is missing from the object or has the wrong type.
    #[error("program {0} missing from tc_counter.bpf.o")]
    MissingProgram(&'static str),
    /// The program could not be loaded into the kernel or attached.
    #[error("failed to attach {program} to {iface}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// The clsact qdisc could not be added (kernels before 6.6 only).
    #[error("failed to add the clsact qdisc to {iface}")]
    Qdisc {
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: tc::TcError,
    },
    /// The map is missing from the loaded object.
    #[error("map {MAP_NAME} missing from tc_counter.bpf.o")]
    MissingMap,
    /// The map could not be read.
    #[error("failed to read map {MAP_NAME}")]
    Map(#[from] MapError),
}

/// A loaded and attached counter; dropping it detaches the programs (the pinned map stays until
/// its pin is removed).
#[derive(Debug)]
pub struct TcCounter {
    ebpf: Ebpf,
    pin_path: PathBuf,
}

impl TcCounter {
    /// Loads the counter with its map pinned at `<pin_dir>/wl_counters` (re-using the map when a
    /// pin is already there) and attaches it to `iface` in the calling thread's network namespace.
    pub fn attach(iface: &str, pin_dir: &Path) -> Result<Self, CounterError> {
        let pin_path = pin_dir.join(MAP_NAME);
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(MAP_NAME, pin_path.as_path())
            .load(objects::TC_COUNTER)
            .map_err(|source| CounterError::Load {
                pin_dir: pin_dir.to_path_buf(),
                source: Box::new(source),
            })?;
        // Kernels >= 6.6 attach through TCX links and need no qdisc; older ones need clsact.
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !tcx {
            match tc::qdisc_add_clsact(iface) {
                Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
                Err(source) => {
                    return Err(CounterError::Qdisc {
                        iface: iface.to_string(),
                        source,
                    });
                }
            }
        }
        for (program, attach_type) in [
            ("wl_count_ingress", TcAttachType::Ingress),
            ("wl_count_egress", TcAttachType::Egress),
        ] {
            let attach_err = |source| CounterError::Attach {
                program,
                iface: iface.to_string(),
                source,
            };
            let prog: &mut SchedClassifier = ebpf
                .program_mut(program)
                .ok_or(CounterError::MissingProgram(program))?
                .try_into()
                .map_err(attach_err)?;
            prog.load().map_err(attach_err)?;
            prog.attach(iface, attach_type).map_err(attach_err)?;
        }
        Ok(TcCounter { ebpf, pin_path })
    }

    /// Where the counter map is pinned.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// Totals for one direction, summed over CPUs.
    pub fn read(&self, direction: Direction) -> Result<Counter, CounterError> {
        let map = self.ebpf.map(MAP_NAME).ok_or(CounterError::MissingMap)?;
        let counters = PerCpuArray::<_, Counter>::try_from(map)?;
        let per_cpu = counters.get(&(direction as u32), 0)?;
        Ok(per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::ebpf::btf_layout::{assert_enum, assert_struct};

    #[test]
    fn counter_matches_c_layout() {
        assert_struct(
            objects::TC_COUNTER,
            "wl_counter",
            size_of::<Counter>(),
            &[
                ("packets", offset_of!(Counter, packets)),
                ("bytes", offset_of!(Counter, bytes)),
            ],
        );
    }

    #[test]
    fn direction_matches_c_enum() {
        assert_enum(
            objects::TC_COUNTER,
            "wl_direction",
            &[
                ("WL_DIR_INGRESS", Direction::Ingress as u32),
                ("WL_DIR_EGRESS", Direction::Egress as u32),
                ("WL_DIR_MAX", 2),
            ],
        );
    }
}
