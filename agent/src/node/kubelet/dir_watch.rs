//! Waiting, from tokio, for something to change in a directory: an inotify watch (creations,
//! writes, renames, removals), with a short sleep as the fallback only when inotify cannot be
//! set up. Used by `kubectl logs -f` and the static pod manifest dir.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// An inotify watch on a directory, readable from tokio.
#[derive(Debug)]
pub struct DirWatch(Inotify);

impl AsRawFd for DirWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWatch {
    /// Watches `dir`; `None` when inotify cannot be set up (or the dir does not exist).
    #[allow(unsafe_code)]
    pub fn new(dir: &Path) -> Option<AsyncFd<DirWatch>> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_CLOSE_WRITE,
            )
            .ok()?;
        // SAFETY: the inotify instance owns its descriptor, which stays open and unchanged
        // until the AsyncFd (which owns the instance) is dropped; `as_raw_fd` always returns it.
        unsafe { AsyncFd::register_with_interest(DirWatch(inotify), tokio::io::Interest::READABLE) }
            .ok()
    }
}

/// Waits for something to happen in the watched directory (or, without a watch, a moment).
pub async fn changed(watch: Option<&AsyncFd<DirWatch>>) {
    let Some(fd) = watch else {
        // Fallback only: inotify could not be set up (no instances left).
        tokio::time::sleep(Duration::from_millis(250)).await;
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable().await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            return;
        };
        match guard.try_io(|inner| {
            inner
                .get_ref()
                .0
                .read_events()
                .map_err(std::io::Error::from)
        }) {
            Ok(_) => return,
            Err(_would_block) => continue,
        }
    }
}
