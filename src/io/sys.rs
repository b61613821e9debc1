//! Thin, safe wrappers over the few syscalls the shell needs that std, socket2 and nix
//! do not offer in the shape the fast path wants: read/writev on TAP fds, recvmmsg and
//! sendmmsg with UDP GRO/GSO control messages, and socket options. (epoll, eventfd and
//! setns are nix's.)

use libc::{UDP_GRO, UDP_SEGMENT};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Writes `parts` as one frame (one TAP write is one frame).
pub fn writev(fd: RawFd, parts: &[&[u8]]) -> io::Result<usize> {
    let mut iovs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 4];
    let n = parts.len().min(4);
    for (v, p) in iovs.iter_mut().zip(parts) {
        *v = libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() };
    }
    // SAFETY: each iovec points into a live slice that the kernel only reads.
    cvt_size(unsafe { libc::writev(fd, iovs.as_ptr(), n as i32) })
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr_in(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)), u16::from_be(s.sin_port))
}

/// Reusable state for `recvmmsg`: one slot per buffer.
pub struct RecvBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    ctrl: Vec<[u8; 64]>,
}

// SAFETY: the raw pointers inside only ever point into this struct's own vectors or the
// caller's buffers during a call; the struct is used by one thread at a time.
unsafe impl Send for RecvBatch {}

/// What one received datagram was.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    /// UDP GRO segment size, when the kernel coalesced datagrams (0 otherwise).
    pub gro_size: u16,
}

impl RecvBatch {
    pub fn new(n: usize) -> RecvBatch {
        RecvBatch {
            // SAFETY: mmsghdr, iovec and sockaddr_in are plain C structs for which all-zero is valid.
            hdrs: vec![unsafe { std::mem::zeroed() }; n],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n],
            // SAFETY: sockaddr_in is a plain C struct for which all-zero is valid.
            addrs: vec![unsafe { std::mem::zeroed() }; n],
            ctrl: vec![[0u8; 64]; n],
        }
    }

    /// Receives up to `bufs.len()` datagrams, each into `bufs[i][offset..]`.
    pub fn recv(
        &mut self,
        fd: RawFd,
        bufs: &mut [Box<[u8]>],
        offset: usize,
        out: &mut Vec<Received>,
    ) -> io::Result<()> {
        out.clear();
        let n = bufs.len().min(self.hdrs.len());
        for (i, buf) in bufs.iter_mut().enumerate().take(n) {
            let b = &mut buf[offset..];
            self.iovs[i] = libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = self.ctrl[i].len();
            h.msg_flags = 0;
        }
        // SAFETY: every header points at live iovecs, addresses and control buffers set above.
        let r =
            unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        let got = match cvt(r) {
            Ok(g) => g as usize,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        for i in 0..got {
            let h = &self.hdrs[i];
            let gro_size = gro_size(&h.msg_hdr);
            out.push(Received { len: h.msg_len as usize, from: from_sockaddr_in(&self.addrs[i]), gro_size });
        }
        Ok(())
    }
}

fn gro_size(h: &libc::msghdr) -> u16 {
    // SAFETY: CMSG_* walk the control buffer the kernel filled, bounded by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let mut v: libc::c_int = 0;
                std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c), (&mut v as *mut libc::c_int).cast(), 4);
                return v as u16;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

/// One datagram to send.
pub struct Datagram<'a> {
    pub data: Parts<'a>,
    pub to: SocketAddrV4,
    /// UDP GSO segment size (0 = a single datagram).
    pub gso_size: u16,
}

/// The bytes of a datagram (or of a UDP GSO run of datagrams).
#[derive(Debug, Clone, Copy)]
pub enum Parts<'a> {
    One(&'a [u8]),
    /// Segment `k` is `headers[k * hdr_len..][..hdr_len]` then `payload[k * mss..][..mss]`
    /// (the last one shorter): sent with two iovecs per segment, nothing copied.
    Interleaved {
        headers: &'a [u8],
        hdr_len: usize,
        payload: &'a [u8],
        mss: usize,
    },
}

impl Parts<'_> {
    fn iovecs(&self) -> usize {
        match self {
            Parts::One(_) => 1,
            Parts::Interleaved { payload, mss, .. } => 2 * payload.len().div_ceil(*mss).max(1),
        }
    }
    pub fn bytes(&self) -> usize {
        match self {
            Parts::One(d) => d.len(),
            Parts::Interleaved { payload, mss, hdr_len, .. } => {
                payload.len() + hdr_len * payload.len().div_ceil(*mss).max(1)
            }
        }
    }
}

/// Sends datagrams with one `sendmmsg` per 64; returns how many the kernel took.
/// Takes an iterator so callers need not collect the datagrams anywhere first.
pub fn send_batch<'a>(fd: RawFd, dgrams: impl IntoIterator<Item = Datagram<'a>>) -> io::Result<usize> {
    send_batch_flags(fd, dgrams, 0)
}

/// [`send_batch`] with `sendmmsg` flags (`MSG_ZEROCOPY`).
pub fn send_batch_flags<'a>(
    fd: RawFd,
    dgrams: impl IntoIterator<Item = Datagram<'a>>,
    flags: libc::c_int,
) -> io::Result<usize> {
    const MAX: usize = 64;
    /// iovecs of one `sendmmsg` (two per segment of an interleaved run).
    const IOVS: usize = 1024;
    let mut dgrams = dgrams.into_iter().peekable();
    let mut sent = 0;
    while dgrams.peek().is_some() {
        // SAFETY: plain C structs, all-zero is valid.
        let mut hdrs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
        let mut iovs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOVS];
        let mut used = 0;
        // SAFETY: as above.
        let mut addrs: [libc::sockaddr_in; MAX] = unsafe { std::mem::zeroed() };
        let mut ctrl = [[0u64; 4]; MAX];
        let mut n = 0;
        while n < MAX {
            let Some(d) = dgrams.next_if(|d| used + d.data.iovecs() <= IOVS || n == 0) else { break };
            let i = n;
            n += 1;
            let first = used;
            match d.data {
                Parts::One(b) => {
                    iovs[used] = iov(b);
                    used += 1;
                }
                Parts::Interleaved { headers, hdr_len, payload, mss } => {
                    for (k, p) in payload.chunks(mss).take((IOVS - used) / 2).enumerate() {
                        iovs[used] = iov(&headers[k * hdr_len..(k + 1) * hdr_len]);
                        iovs[used + 1] = iov(p);
                        used += 2;
                    }
                }
            }
            addrs[i] = sockaddr_in(d.to);
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut iovs[first];
            h.msg_iovlen = used - first;
            if d.gso_size > 0 {
                h.msg_control = ctrl[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE/CMSG_FIRSTHDR/CMSG_DATA address the 32-byte control
                // buffer above, which fits one cmsg carrying a u16.
                unsafe {
                    h.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::copy_nonoverlapping((&d.gso_size as *const u16).cast::<u8>(), libc::CMSG_DATA(c), 2);
                }
            }
        }
        // SAFETY: every header points into the arrays above and into live datagram slices
        // (the iterator's items borrow buffers that outlive this call).
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, flags) };
        let k = cvt(r)? as usize;
        sent += k;
        if k < n {
            break;
        }
    }
    Ok(sent)
}

fn iov(b: &[u8]) -> libc::iovec {
    libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() }
}

/// Sets an integer socket option.
pub fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a valid c_int and its size.
    cvt(unsafe { libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), 4) }).map(drop)
}

/// Enables UDP GRO on a socket (coalesced datagrams, with their segment size in a cmsg).
pub fn enable_udp_gro(fd: RawFd) -> io::Result<()> {
    set_int_opt(fd, libc::SOL_UDP, UDP_GRO, 1)
}

/// Moves the calling thread into the network namespace of `ns`.
pub fn setns_net(ns: &std::fs::File) -> io::Result<()> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Runs `f` on a new thread inside the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {}: {e}", path.display())))?;
    std::thread::Builder::new()
        .name("ucanal-netns".into())
        .spawn(move || {
            setns_net(&ns).map_err(|e| io::Error::new(e.kind(), format!("entering the network namespace: {e}")))?;
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("netns setup thread panicked"))?
}
