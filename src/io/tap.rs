//! TAP devices: one per pod (the pod's `eth0`) and the host port.
//!
//! ucanal opens TAPs itself (`TUNSETIFF` on `/dev/net/tun`) rather than through the
//! tun-tap crate, because it needs what that crate does not offer: `IFF_VNET_HDR` (the
//! virtio-net header carrying checksum-offload and GSO metadata), `IFF_MULTI_QUEUE`
//! (one queue per worker) and `TUNSETOFFLOAD`. A TAP is created in the network
//! namespace the opening thread is in; it disappears when its last queue is closed,
//! so a crashed ucanal leaves no TAP behind — unless it was opened [`Persist::Keep`]
//! (`TUNSETPERSIST`): then it outlives ucanal with its ifindex, addresses and routes,
//! the kernel keeps routing to it (frames sent while no queue is attached are dropped,
//! which TCP retransmits; nothing answers with a reset), and the next ucanal attaches
//! its queues to the same device.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::{IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TUNSETIFF, TUNSETOFFLOAD, TUNSETPERSIST};
use libc::{TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6};

/// `ifr_flags` is a C `short`; libc declares the `IFF_*` flags as `int`.
const fn ifr_flag(f: libc::c_int) -> libc::c_short {
    f as u16 as libc::c_short
}
/// Fail instead of attaching when the device already exists.
const IFF_TUN_EXCL: libc::c_short = ifr_flag(libc::IFF_TUN_EXCL);

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Whether a TAP outlives its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Created here (never someone else's), gone with its last queue.
    No,
    /// Persistent: attached to when it exists already (left by a previous ucanal),
    /// created otherwise; stays when the queues close.
    Keep,
    /// Attached to when it exists already (a persistent TAP a ucanal that is gone left)
    /// and made non-persistent: gone with its last queue, as if created here.
    Release,
}

/// Opens `queues` queues of the TAP `name` in the calling thread's network namespace,
/// non-blocking, with a virtio-net header on every frame. With `offloads`, the kernel
/// may hand ucanal TCP super-packets with partial checksums (TSO) and accepts them back.
pub fn open(name: &str, queues: usize, offloads: bool) -> io::Result<Vec<OwnedFd>> {
    open_with(name, queues, offloads, Persist::No)
}

/// [`open`], with the persistence of the device chosen.
pub fn open_with(name: &str, queues: usize, offloads: bool, persist: Persist) -> io::Result<Vec<OwnedFd>> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("TAP name '{name}' must be 1-15 bytes")));
    }
    let mut fds = Vec::with_capacity(queues);
    for q in 0..queues.max(1) {
        // SAFETY: the path is a NUL-terminated literal.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("opening /dev/net/tun: {e}")));
        }
        // SAFETY: fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The first queue must create the device: never attach to someone else's TAP
        // (a persistent one is ours from a previous run, and attached to).
        let excl = if q == 0 && persist == Persist::No { IFF_TUN_EXCL } else { 0 };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: ifr_flag(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE) | excl,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which IfReq lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            let hint = if q == 0 && e.raw_os_error() == Some(libc::EBUSY) {
                " (an interface with that name already exists)"
            } else {
                ""
            };
            return Err(io::Error::new(e.kind(), format!("creating TAP {name} queue {q}: {e}{hint}")));
        }
        if q == 0 {
            let features = if offloads { TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN } else { 0 };
            // SAFETY: TUNSETOFFLOAD takes an unsigned int by value.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, features) } < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("TUNSETOFFLOAD on {name}: {e}")));
            }
            if persist != Persist::No {
                set_persist(&fd, persist == Persist::Keep)
                    .map_err(|e| io::Error::new(e.kind(), format!("TUNSETPERSIST on {name}: {e}")))?;
            }
        }
        fds.push(fd);
    }
    Ok(fds)
}

/// Makes the TAP behind `fd` persistent or not; a TAP made non-persistent goes away
/// when its last queue closes.
pub fn set_persist(fd: &OwnedFd, on: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an int flag by value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(on)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
