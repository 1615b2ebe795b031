//! Bounded capture of a guest's stdout and stderr, and their live echo.
//!
//! [`Capture`] is a WASI output stream that keeps what the guest writes, up to
//! a byte cap. A write past the cap traps the guest with
//! [`LimitExceeded::Stdio`]: the run ends with `output_limit` instead of the
//! host buffering without bound or the guest silently losing output.
//!
//! When a run echoes output (`wfrun exec` shows a job's output live), the
//! bytes go through a bounded channel to an [`EchoThread`] that does the
//! blocking writes. A slow reader on the other end of a pipe fills the
//! channel; the stream then reports no room and the guest waits in an async
//! host call, where the run's deadline can still stop it. While the guest
//! runs, the host thread running it never blocks on a terminal or a pipe;
//! once it has ended, [`EchoThread::finish`] makes sure what was queued is
//! written (by the thread, or there if the thread has not started).

use super::limits::LimitExceeded;
use bytes::Bytes;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Where captured bytes are also copied as they arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// Keep them only.
    None,
    /// Copy to this process's stdout.
    Stdout,
    /// Copy to this process's stderr.
    Stderr,
}

/// Chunks of at most this size are offered to the guest per write.
const WRITE_BUDGET: usize = 64 * 1024;
/// Chunks buffered between the guest and the echo thread (≤ 1 MiB).
const ECHO_CHUNKS: usize = 16;

/// The sending side of an [`EchoThread`], bound to one destination.
#[derive(Debug, Clone)]
pub struct Echoer {
    target: Tee,
    sender: mpsc::Sender<(Tee, Bytes)>,
}

impl Echoer {
    /// Whether a chunk can be queued without waiting.
    fn has_room(&self) -> bool {
        self.sender.capacity() > 0
    }

    /// Waits until a chunk can be queued.
    async fn room(&self) {
        // An error means the thread is gone; writes will then just be kept.
        if let Ok(permit) = self.sender.reserve().await {
            drop(permit);
        }
    }

    /// Queues `bytes` if there is room; a guest that writes without asking
    /// for room first loses the echo of that chunk, never the capture.
    fn offer(&self, bytes: Bytes) {
        let _ = self.sender.try_send((self.target, bytes));
    }

    /// Queues `bytes`, waiting for room.
    pub async fn send(&self, bytes: Bytes) {
        let _ = self.sender.send((self.target, bytes)).await;
    }
}

/// A thread that copies echoed chunks to this process's stdout or stderr.
#[derive(Debug)]
pub struct EchoThread {
    sender: mpsc::Sender<(Tee, Bytes)>,
    /// The chunks queued; the thread holds the lock from its start until it
    /// ends.
    chunks: Arc<Mutex<mpsc::Receiver<(Tee, Bytes)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl EchoThread {
    /// Starts the thread.
    pub fn start() -> EchoThread {
        let (sender, receiver) = mpsc::channel::<(Tee, Bytes)>(ECHO_CHUNKS);
        let chunks = Arc::new(Mutex::new(receiver));
        let queued = chunks.clone();
        let thread = std::thread::Builder::new()
            .name("wfrun-echo".to_owned())
            .spawn(move || {
                let mut chunks = queued.lock().unwrap_or_else(|p| p.into_inner());
                while let Some((target, bytes)) = chunks.blocking_recv() {
                    echo(target, &bytes);
                }
            })
            .expect("spawning the echo thread");
        EchoThread { sender, chunks, thread }
    }

    /// An echoer to `target`, or none when `target` is [`Tee::None`].
    pub fn echoer(this: Option<&EchoThread>, target: Tee) -> Option<Echoer> {
        match (this, target) {
            (Some(thread), Tee::Stdout | Tee::Stderr) => Some(Echoer { target, sender: thread.sender.clone() }),
            _ => None,
        }
    }

    /// Waits until everything queued has been written. Every [`Echoer`] must
    /// be dropped first.
    ///
    /// A thread that has not started yet (a new thread can wait a while for
    /// a CPU, longer than a short run lasts) is not waited for: the chunks
    /// are written here, in order, and the thread then finds none.
    pub fn finish(self) {
        drop(self.sender);
        match self.chunks.try_lock() {
            Ok(mut chunks) => {
                while let Ok((target, bytes)) = chunks.try_recv() {
                    echo(target, &bytes);
                }
            }
            Err(_) => {
                let _ = self.thread.join();
            }
        }
    }
}

/// Writes an echoed chunk. A closed terminal or pipe must not fail the
/// guest: the bytes are captured regardless.
fn echo(target: Tee, bytes: &[u8]) {
    let _ = match target {
        Tee::None => Ok(()),
        Tee::Stdout => std::io::stdout().lock().write_all(bytes).and_then(|()| std::io::stdout().flush()),
        Tee::Stderr => std::io::stderr().lock().write_all(bytes),
    };
}

/// A capped, shareable capture of one guest stream.
#[derive(Debug, Clone)]
pub struct Capture {
    stream: &'static str,
    limit: u64,
    echo: Option<Echoer>,
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    /// A capture of the guest stream named `stream` (`stdout` or `stderr`)
    /// holding at most `limit` bytes, echoed through `echo` if given.
    pub fn new(stream: &'static str, limit: u64, echo: Option<Echoer>) -> Self {
        Capture { stream, limit, echo, buffer: Arc::default() }
    }

    /// Everything captured so far, as lossy UTF-8.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }

    fn append(&self, bytes: Bytes) -> Result<(), LimitExceeded> {
        {
            let mut buffer = self.buffer.lock().unwrap();
            if buffer.len() as u64 + bytes.len() as u64 > self.limit {
                return Err(LimitExceeded::Stdio { stream: self.stream, limit: self.limit });
            }
            buffer.extend_from_slice(&bytes);
        }
        if let Some(echo) = &self.echo {
            echo.offer(bytes);
        }
        Ok(())
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(bytes).map_err(|e| StreamError::Trap(e.into()))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Past the cap there is still "room": the next write traps with a
        // named limit rather than leaving the guest to spin on a full stream.
        match &self.echo {
            Some(echo) if !echo.has_room() => Ok(0),
            _ => Ok(WRITE_BUDGET),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {
        if let Some(echo) = &self.echo {
            echo.room().await;
        }
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = self.append(Bytes::copy_from_slice(buf)).map(|()| buf.len()).map_err(std::io::Error::other);
        Poll::Ready(result)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_cap_trap_with_a_named_limit() {
        let mut capture = Capture::new("stdout", 8, None);
        OutputStream::write(&mut capture, Bytes::from_static(b"12345678")).unwrap();
        let err = OutputStream::write(&mut capture, Bytes::from_static(b"9")).unwrap_err();
        let StreamError::Trap(trap) = err else { panic!("expected a trap, got {err:?}") };
        assert_eq!(trap.downcast_ref::<LimitExceeded>(), Some(&LimitExceeded::Stdio { stream: "stdout", limit: 8 }));
        assert_eq!(capture.contents(), "12345678");
    }

    #[test]
    fn a_full_echo_channel_reports_no_room_instead_of_blocking() {
        // A channel nobody drains, as with a pipe whose reader has stalled.
        let (sender, _receiver) = mpsc::channel(1);
        let echo = Echoer { target: Tee::Stdout, sender };
        let mut capture = Capture::new("stdout", 1024, Some(echo));
        assert_eq!(capture.check_write().unwrap(), WRITE_BUDGET);
        OutputStream::write(&mut capture, Bytes::from_static(b"first")).unwrap();
        assert_eq!(capture.check_write().unwrap(), 0, "the guest must wait, not the host");
        assert_eq!(capture.contents(), "first");
    }
}
