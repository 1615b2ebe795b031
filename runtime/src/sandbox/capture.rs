//! Bounded capture of a guest's stdout and stderr.
//!
//! [`Capture`] is a WASI output stream that keeps what the guest writes, up to
//! a byte cap, and optionally copies it to a host stream as it arrives (so
//! `wfrun exec` shows a job's output live). A write past the cap traps the
//! guest with [`LimitExceeded::Stdio`]: the run ends with `output_limit`
//! instead of the host buffering without bound or the guest silently losing
//! output.

use super::limits::LimitExceeded;
use bytes::Bytes;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
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

/// A capped, shareable capture of one guest stream.
#[derive(Debug, Clone)]
pub struct Capture {
    stream: &'static str,
    limit: u64,
    tee: Tee,
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    /// A capture of the guest stream named `stream` (`stdout` or `stderr`)
    /// holding at most `limit` bytes.
    pub fn new(stream: &'static str, limit: u64, tee: Tee) -> Self {
        Capture {
            stream,
            limit,
            tee,
            buffer: Arc::default(),
        }
    }

    /// Everything captured so far, as lossy UTF-8.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }

    fn append(&self, bytes: &[u8]) -> Result<(), LimitExceeded> {
        let mut buffer = self.buffer.lock().unwrap();
        if buffer.len() as u64 + bytes.len() as u64 > self.limit {
            return Err(LimitExceeded::Stdio {
                stream: self.stream,
                limit: self.limit,
            });
        }
        buffer.extend_from_slice(bytes);
        // A broken terminal must not fail the guest: the bytes are captured.
        let _ = match self.tee {
            Tee::None => Ok(()),
            Tee::Stdout => std::io::stdout().lock().write_all(bytes),
            Tee::Stderr => std::io::stderr().lock().write_all(bytes),
        };
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
        self.append(&bytes).map_err(|e| StreamError::Trap(e.into()))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always offer room: a write past the cap traps with a named limit
        // rather than leaving the guest to spin on a full stream.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
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
        let mut capture = Capture::new("stdout", 8, Tee::None);
        OutputStream::write(&mut capture, Bytes::from_static(b"12345678")).unwrap();
        let err = OutputStream::write(&mut capture, Bytes::from_static(b"9")).unwrap_err();
        let StreamError::Trap(trap) = err else {
            panic!("expected a trap, got {err:?}")
        };
        assert_eq!(
            trap.downcast_ref::<LimitExceeded>(),
            Some(&LimitExceeded::Stdio {
                stream: "stdout",
                limit: 8
            })
        );
        assert_eq!(capture.contents(), "12345678");
    }
}
