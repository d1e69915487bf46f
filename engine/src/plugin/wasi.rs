//! The WASI a plugin links: wasmtime-wasi's p2 interfaces, with
//! `wasi:io/poll` and `wasi:io/streams` replaced by versions that never wait.
//!
//! Owns: what a guest's blocking I/O calls do. wasmtime-wasi's synchronous
//! versions drive their futures with a Tokio `block_on`, which panics on an
//! async worker (where quick plugin versions run) and, on a blocking thread,
//! waits as long as the guest asks (a `sleep` of an hour held a thread for
//! an hour, outside the CPU deadline, which counts only guest code).
//!
//! Invariants: every call here returns at once. What a plugin can reach is
//! ready at once (captured stdout/stderr, an empty stdin, clocks frozen at
//! the delivery's time); a call that would have to wait for anything else
//! (a sleep, a pollable that is not ready) traps, failing that attempt with
//! the reason, like any other trap. Nothing here may happen twice.

use super::host::HostState;
use std::future::Future;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};

/// What a guest is told when it tries to wait.
const NO_WAITING: &str = "a plugin may not wait: blocking I/O, sleeping and polling \
     for anything not ready at once are not allowed";

/// Links WASI p2 for plugins: wasmtime-wasi's interfaces, then the
/// non-waiting poll and streams over them.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    poll::add_to_linker::<HostState, NoWait>(linker, |s| NoWaitIo(s.table()))?;
    streams::add_to_linker::<HostState, NoWait>(linker, |s| NoWaitIo(s.table()))?;
    linker.allow_shadowing(false);
    Ok(())
}

struct NoWait;

impl HasData for NoWait {
    type Data<'a> = NoWaitIo<'a>;
}

/// The instance's resource table, seen through the non-waiting interfaces.
pub struct NoWaitIo<'a>(&'a mut ResourceTable);

/// Pollables of clocks are Tokio timers, which need a runtime's timer to
/// be created; calls made outside any runtime (the dev kit) use this one.
static TIMERS: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds")
});

/// `f`'s output if it is ready on its first poll.
fn at_once<F: Future>(f: F) -> Option<F::Output> {
    let _runtime = tokio::runtime::Handle::try_current()
        .is_err()
        .then(|| TIMERS.enter());
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

fn refused() -> wasmtime::Error {
    wasmtime::Error::msg(NO_WAITING)
}

fn stream_at_once<T>(f: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    at_once(f).unwrap_or_else(|| Err(StreamError::Trap(refused())))
}

impl poll::Host for NoWaitIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        at_once(async_poll::Host::poll(self.0, pollables)).unwrap_or_else(|| Err(refused()))
    }
}

impl poll::HostPollable for NoWaitIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        at_once(async_poll::HostPollable::ready(self.0, pollable)).unwrap_or(Ok(false))
    }
    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        at_once(async_poll::HostPollable::block(self.0, pollable)).unwrap_or_else(|| Err(refused()))
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

impl streams::Host for NoWaitIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NoWaitIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        // Dropping cancels the stream's pending work, which for the streams
        // a plugin has (captured output) is none.
        at_once(async_streams::HostOutputStream::drop(self.0, stream))
            .unwrap_or_else(|| Err(refused()))
    }
    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }
    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }
    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        stream_at_once(async_streams::HostOutputStream::blocking_write_and_flush(
            self.0, stream, bytes,
        ))
    }
    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        stream_at_once(
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }
    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }
    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }
    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }
    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        stream_at_once(async_streams::HostOutputStream::blocking_flush(
            self.0, stream,
        ))
    }
    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }
    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        stream_at_once(async_streams::HostOutputStream::blocking_splice(
            self.0, dst, src, len,
        ))
    }
}

impl streams::HostInputStream for NoWaitIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        at_once(async_streams::HostInputStream::drop(self.0, stream))
            .unwrap_or_else(|| Err(refused()))
    }
    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }
    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        stream_at_once(async_streams::HostInputStream::blocking_read(
            self.0, stream, len,
        ))
    }
    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }
    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        stream_at_once(async_streams::HostInputStream::blocking_skip(
            self.0, stream, len,
        ))
    }
    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}
