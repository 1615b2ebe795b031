//! Leaving the process without making its caller wait for the kernel to
//! take its memory back.
//!
//! A process's exit is reported to its parent only after its address space
//! is torn down, by whichever of its threads exits last. For a warm `wfrun
//! exec` that teardown (`exit_mmap`: unmapping the engine, the binary's
//! pages, the heap) took 0.7–0.9 ms of a 7 ms run on the reference machine
//! (docs/performance.md), all of it spent after the run's outcome was
//! printed and recorded, with the caller waiting. [`exit`] hands it to a
//! helper: a child that shares the address space (`CLONE_VM`) and holds
//! nothing else, and that leaves once the process has gone. The process's
//! own exit then drops only its share of the memory and is reported at
//! once; the helper, the last holder, does the teardown on its own time.
//!
//! Before it exits the process closes every file descriptor, so that a
//! reader of its output sees the end of it as soon as its exit is
//! reported. Everything else is as after `std::process::exit`: the status,
//! and Rust's buffered standard output written out. Where a step is not
//! available (another OS, a kernel before 5.9), the process exits as
//! usual.

use std::io::Write;

/// Ends the process with status `code`, leaving the release of its memory
/// to a helper process (see the module docs). Buffered standard output and
/// error are written out first.
pub fn exit(code: u8) -> ! {
    let _ = std::io::stdout().lock().flush();
    let _ = std::io::stderr().lock().flush();
    #[cfg(target_os = "linux")]
    linux::hand_off_teardown();
    std::process::exit(i32::from(code))
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux {
    use std::ffi::{c_int, c_long, c_void};

    /// The helper's stack: it makes three system calls.
    const STACK_BYTES: usize = 16 * 1024;

    /// Starts the helper and closes every descriptor but the one it
    /// watches; then the caller's exit. Returns without doing anything if a
    /// step fails, so that the process exits as usual.
    pub(super) fn hand_off_teardown() {
        // A descriptor that becomes readable once this process (every
        // thread of it) has exited.
        // SAFETY: a plain system call on our own pid; no memory is passed.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        let Ok(pidfd) = c_int::try_from(pidfd) else { return };
        if pidfd < 0 {
            return;
        }
        // Never freed: the helper runs on it until the address space goes.
        let stack = Box::leak(vec![0u8; STACK_BYTES].into_boxed_slice());
        // The stack grows down; its top, 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + STACK_BYTES) & !15;
        // SAFETY: `helper` runs on its own stack (`top`, leaked above, so
        // valid for as long as the address space) and touches no memory but
        // that stack and a copy of `pidfd` passed by value in the argument
        // pointer: no lock, allocation or thread-local, so it does not
        // matter what the process's threads are doing meanwhile. Sharing
        // the descriptor table (`CLONE_FILES`) means the closing below
        // leaves the helper with nothing but `pidfd`. If `clone` fails,
        // nothing was started and the process exits as usual.
        let child = unsafe {
            libc::clone(
                helper,
                top as *mut c_void,
                libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD,
                pidfd as usize as *mut c_void,
            )
        };
        if child < 0 {
            return;
        }
        // Every descriptor but `pidfd`: the process's output is complete
        // before its exit is reported. (A kernel without `close_range` leaves
        // them open until the helper leaves, a moment after.)
        let fd = pidfd as libc::c_uint;
        // SAFETY: closing descriptors; nothing runs after this but the exit,
        // and the helper uses only `pidfd`.
        unsafe {
            if fd > 0 {
                libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, fd - 1, 0 as libc::c_uint);
            }
            libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0 as libc::c_uint);
        }
    }

    /// The helper: with every signal blocked (SIGKILL still ends it), waits
    /// until the process it shares memory with has exited, then exits
    /// itself, the last holder of that memory. Raw system calls only: it
    /// runs on a bare stack, with the thread-local storage of the thread
    /// that started it (a failing call sets that thread's `errno`, which
    /// nothing reads any more).
    extern "C" fn helper(arg: *mut c_void) -> c_int {
        let pidfd = arg as usize as c_long;
        // SAFETY: system calls on memory of this frame only.
        unsafe {
            let all: u64 = !0;
            libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &all as *const u64, 0usize, 8usize);
            let mut watched = libc::pollfd { fd: pidfd as c_int, events: libc::POLLIN, revents: 0 };
            // With every signal blocked the wait ends only when the
            // process has exited, or at once if the descriptor is unusable
            // (then the process's last thread takes its memory back itself).
            libc::syscall(libc::SYS_poll, &mut watched as *mut libc::pollfd, 1usize, -1 as c_int);
        }
        // Returning makes the helper exit (glibc's `clone` calls `exit`
        // with this value).
        0
    }
}
