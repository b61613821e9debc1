//! `MSG_ZEROCOPY` on the VXLAN sends (`zerocopy = true`, a measured spike, off by
//! default): the kernel pins the send buffers instead of copying them, and reports on
//! each socket's error queue when it is done with them (ranges of send ids, with
//! `SO_EE_CODE_ZEROCOPY_COPIED` when it had to copy after all). A worker may reuse its
//! buffers only then, so a flush waits for the completions of its own sends.
//!
//! Heads up: the source sockets are shared by all workers, so completions are counted
//! per socket, whoever reads them: a worker waits until the socket's completed count
//! reaches the count of sends issued up to its own.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `SO_ZEROCOPY` (asm-generic/socket.h), `SO_EE_ORIGIN_ZEROCOPY` and
/// `SO_EE_CODE_ZEROCOPY_COPIED` (linux/errqueue.h); not in the libc crate.
const SO_ZEROCOPY: libc::c_int = 60;
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;
/// How long a flush waits for completions before it gives up (counted).
const WAIT_MS: u64 = 100;

/// Turns `SO_ZEROCOPY` on for a socket.
pub fn enable(fd: RawFd) -> io::Result<()> {
    super::sys::set_int_opt(fd, libc::SOL_SOCKET, SO_ZEROCOPY, 1)
}

/// Completion accounting of the shared source sockets.
pub struct Completions {
    issued: Vec<AtomicU64>,
    done: Vec<AtomicU64>,
}

/// What one drain of an error queue found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Sends completed.
    pub done: u64,
    /// Of those, sends the kernel copied anyway.
    pub copied: u64,
    /// The wait gave up (buffers reused while the kernel may still hold them).
    pub timed_out: bool,
}

impl Completions {
    pub fn new(sockets: usize) -> Self {
        Completions {
            issued: (0..sockets).map(|_| AtomicU64::new(0)).collect(),
            done: (0..sockets).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records `n` sends on socket `sock`; returns the count to wait for.
    pub fn issued(&self, sock: usize, n: usize) -> u64 {
        self.issued[sock].fetch_add(n as u64, Relaxed) + n as u64
    }

    /// Waits until socket `sock` (`fd`) has completed `target` sends.
    pub fn wait(&self, fd: RawFd, sock: usize, target: u64) -> Drained {
        let mut total = Drained::default();
        let deadline = super::clock::now().0 + WAIT_MS * 1_000_000;
        while self.done[sock].load(Relaxed) < target {
            let d = drain(fd);
            self.done[sock].fetch_add(d.done, Relaxed);
            total.done += d.done;
            total.copied += d.copied;
            if d.done == 0 {
                if super::clock::now().0 > deadline {
                    total.timed_out = true;
                    break;
                }
                let mut p = libc::pollfd { fd, events: 0, revents: 0 };
                // SAFETY: one valid pollfd; POLLERR is always reported.
                unsafe { libc::poll(&mut p, 1, 1) };
            }
        }
        total
    }
}

/// Reads every completion waiting on a socket's error queue.
fn drain(fd: RawFd) -> Drained {
    let mut out = Drained::default();
    loop {
        let mut ctrl = [0u64; 16];
        // SAFETY: all-zero msghdr is valid; it points at the control buffer above only.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = ctrl.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&ctrl);
        // SAFETY: msg is valid for the call; no data buffer is needed for the error queue.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if r < 0 {
            return out;
        }
        // SAFETY: walks the control messages the kernel wrote into `ctrl`, within
        // msg_controllen; the IP_RECVERR payload is a sock_extended_err.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_IP && (*c).cmsg_type == libc::IP_RECVERR {
                    let ee = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::sock_extended_err>());
                    if ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY && ee.ee_errno == 0 {
                        let n = u64::from(ee.ee_data.wrapping_sub(ee.ee_info)) + 1;
                        out.done += n;
                        if ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0 {
                            out.copied += n;
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
}
