//! Pipes for zero-copy splicing (Linux `splice(2)`): bytes move socket →
//! pipe → socket as page references, never through user space. A pipe is
//! held only while data is in flight and goes back to a small per-thread
//! pool, so idle connections cost no descriptors beyond their sockets.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};

/// Pipes each worker thread keeps for reuse (two descriptors each; kept
/// small so a gateway near its descriptor limit is not pushed over it).
const POOL: usize = 8;
/// Most bytes moved per call (the default pipe capacity).
pub(crate) const CHUNK: usize = 64 * 1024;

thread_local! {
    static PIPES: RefCell<Vec<(OwnedFd, OwnedFd)>> = const { RefCell::new(Vec::new()) };
    /// Tests turn pipes off to exercise the copying fallback.
    #[cfg(test)]
    pub(crate) static DISABLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// An empty pipe on loan from the pool.
pub(crate) struct PooledPipe {
    fds: Option<(OwnedFd, OwnedFd)>,
}

impl PooledPipe {
    /// A pipe from the pool or a new one; `None` when none can be made
    /// (out of descriptors: the caller copies through memory instead).
    pub(crate) fn take() -> Option<Self> {
        #[cfg(test)]
        if DISABLED.with(std::cell::Cell::get) {
            return None;
        }
        let fds = PIPES
            .with(|p| p.borrow_mut().pop())
            .or_else(|| pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok())?;
        Some(Self { fds: Some(fds) })
    }

    /// Moves up to `len` bytes from `src` into the pipe.
    pub(crate) fn fill(&self, src: impl AsFd, len: usize) -> io::Result<usize> {
        let (_, w) = self.fds.as_ref().ok_or(io::ErrorKind::NotConnected)?;
        splice(
            src,
            None,
            w,
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        )
        .map_err(io::Error::from)
    }

    /// Moves up to `len` bytes from the pipe into `dst`.
    pub(crate) fn drain(&self, dst: impl AsFd, len: usize) -> io::Result<usize> {
        let (r, _) = self.fds.as_ref().ok_or(io::ErrorKind::NotConnected)?;
        splice(
            r,
            None,
            dst,
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        )
        .map_err(io::Error::from)
    }

    /// Closes a pipe that may still hold bytes (it must not be reused).
    pub(crate) fn discard(mut self) {
        self.fds = None;
    }
}

impl Drop for PooledPipe {
    fn drop(&mut self) {
        if let Some(fds) = self.fds.take() {
            PIPES.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL {
                    p.push(fds);
                }
            });
        }
    }
}
