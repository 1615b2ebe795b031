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
//! Before it starts the helper the process closes every file descriptor,
//! so that a reader of its output sees the end of it as soon as its exit
//! is reported. Everything else is as after `std::process::exit`: the
//! status, and Rust's buffered standard output written out. What changes
//! is that the memory (and the helper, a process of the same cgroup) may
//! outlive the reported exit by a moment.
//!
//! The hand-off is made only where an exited helper is sure to be reaped:
//! in the system's first PID namespace, whose PID 1 is the system's init,
//! and not by a process that is itself PID 1. Inside a container the reaper
//! may be an application that never reaps a child it did not start, and
//! each `exec` would leave a zombie. Where a step is not available (another
//! OS, a kernel before 5.9, a system call a seccomp filter refuses with an
//! error), the process exits as usual.

use std::io::Write;

/// Ends the process with status `code`, leaving the release of its memory
/// to a helper process where that is safe (see the module docs). Buffered
/// standard output and error are written out first.
pub fn exit(code: u8) -> ! {
    let _ = std::io::stdout().lock().flush();
    let _ = std::io::stderr().lock().flush();
    #[cfg(target_os = "linux")]
    if linux::helper_is_reaped() {
        linux::hand_off_teardown();
    }
    std::process::exit(i32::from(code))
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux {
    use std::ffi::{c_int, c_void};

    /// The helper's stack: it makes one system call.
    const STACK_BYTES: usize = 16 * 1024;

    /// The system's first PID namespace, as `/proc/self/ns/pid` names it
    /// (its inode number is fixed: `PROC_PID_INIT_INO`).
    const FIRST_PID_NAMESPACE: &str = "pid:[4026531836]";

    /// Whether a helper left behind is reaped: this process is in the
    /// first PID namespace (whose PID 1, the system's init, reaps every
    /// orphan) and is not PID 1 itself.
    pub(super) fn helper_is_reaped() -> bool {
        std::process::id() != 1
            && std::fs::read_link("/proc/self/ns/pid").is_ok_and(|ns| ns.as_os_str() == FIRST_PID_NAMESPACE)
    }

    /// Closes every descriptor but a pidfd of this process, then starts the
    /// helper; then the caller's exit. Returns early if a step fails, and
    /// the process exits as usual (having closed its descriptors, which
    /// its exit would do anyway).
    pub(super) fn hand_off_teardown() {
        // A descriptor that becomes readable once this process (every
        // thread of it) has exited.
        // SAFETY: a plain system call on our own pid; no memory is passed.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        let Ok(pidfd) = c_int::try_from(pidfd) else { return };
        if pidfd < 0 {
            return;
        }
        // Every descriptor but `pidfd`, before the helper exists: it gets
        // a copy of the table holding `pidfd` alone, and the process's
        // output is complete before its exit is reported. A kernel without
        // `close_range` (or a filter refusing it) means no hand-off.
        let fd = pidfd as libc::c_uint;
        // SAFETY: closing descriptors; nothing runs after this but the exit.
        let closed = unsafe {
            (fd == 0 || libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, fd - 1, 0 as libc::c_uint) == 0)
                && libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0 as libc::c_uint) == 0
        };
        if !closed {
            return;
        }
        // Never freed: the helper runs on it until the address space goes.
        let stack = Box::leak(vec![0u8; STACK_BYTES].into_boxed_slice());
        // The stack grows down; its top, 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + STACK_BYTES) & !15;
        // SAFETY: `sigset_t`s filled and read by libc on this frame. Every
        // signal is blocked across the `clone`, so that the helper starts
        // with them all blocked (it inherits the mask) and no handler of
        // the process ever runs on it; the mask is restored after.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
        }
        // SAFETY: `helper` runs on its own stack (`top`, leaked above, so
        // valid for as long as the address space) and touches no memory but
        // that stack and `pidfd`, passed by value in the argument pointer:
        // no lock, allocation or thread-local (a failing call would set the
        // starting thread's `errno`, which nothing reads any more), so it
        // does not matter what the process's threads are doing meanwhile.
        // If `clone` fails, nothing was started.
        unsafe {
            libc::clone(helper, top as *mut c_void, libc::CLONE_VM | libc::SIGCHLD, pidfd as usize as *mut c_void);
            libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        }
    }

    /// The helper: with every signal blocked (SIGKILL still ends it), waits
    /// until the process it shares memory with has exited, then exits
    /// itself, the last holder of that memory. One raw system call: it runs
    /// on a bare stack, with the thread-local storage of the thread that
    /// started it.
    extern "C" fn helper(arg: *mut c_void) -> c_int {
        let mut watched = libc::pollfd { fd: arg as usize as c_int, events: libc::POLLIN, revents: 0 };
        // SAFETY: a system call on memory of this frame only. With every
        // signal blocked the wait ends only when the process has exited,
        // or at once if the descriptor is unusable (then the process's last
        // thread takes its memory back itself). No timeout, no signal mask.
        unsafe {
            libc::syscall(
                libc::SYS_ppoll,
                &mut watched as *mut libc::pollfd,
                1 as libc::c_ulong,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            );
        }
        // Returning makes the helper exit (glibc's `clone` calls `exit`
        // with this value).
        0
    }
}
