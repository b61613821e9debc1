//! Bytes and fds over the hand-over connection (a blocking Unix stream with
//! timeouts): fds travel in `SCM_RIGHTS` messages; every read collects whatever fds
//! arrive with its bytes, so no fd is dropped by a read that did not expect it.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use super::offer::FDS_PER_MESSAGE;

/// Sends `fds` in messages of at most [`FDS_PER_MESSAGE`], each carried by one byte `F`.
pub(crate) fn send_fds(s: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let cmsg = [ControlMessage::ScmRights(chunk)];
        let n = sendmsg::<()>(s.as_raw_fd(), &[IoSlice::new(b"F")], &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
        if n != 1 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "hand-over: fd message not sent"));
        }
    }
    Ok(())
}

/// Writes all of `b` (no fds).
pub(crate) fn send_all(mut s: &UnixStream, b: &[u8]) -> io::Result<()> {
    s.write_all(b)
}

/// Reads exactly `buf.len()` bytes, keeping the fds that come with them in `fds`.
pub(crate) fn recv_exact(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let mut space = nix::cmsg_space!([RawFd; 253]);
        let mut iov = [IoSliceMut::new(&mut buf[at..])];
        let msg = match recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let cmsgs = msg.cmsgs().map_err(|_| io::Error::other("hand-over: fds cut short (MSG_CTRUNC)"))?;
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these fds in this process for us alone.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.bytes == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "hand-over: the peer closed the connection"));
        }
        at += msg.bytes;
    }
    Ok(())
}

/// Reads one line of at most `max` bytes (without its newline).
pub(crate) fn recv_line(s: &UnixStream, max: usize) -> io::Result<String> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut b = [0u8; 1];
        recv_exact(s, &mut b, &mut fds)?;
        if b[0] == b'\n' {
            break;
        }
        if line.len() >= max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("hand-over: a line longer than {max} bytes"),
            ));
        }
        line.push(b[0]);
    }
    if !fds.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "hand-over: fds where a line was expected"));
    }
    String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "hand-over: a line not in UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_and_bytes_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<std::fs::File> = (0..300).map(|_| tempfile::tempfile().unwrap()).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        send_all(&a, b"head").unwrap();
        send_fds(&a, &raw).unwrap();
        send_all(&a, b"tail\n").unwrap();
        let mut fds = Vec::new();
        let mut head = [0u8; 4];
        recv_exact(&b, &mut head, &mut fds).unwrap();
        assert_eq!(&head, b"head");
        let mut marks = [0u8; 2];
        recv_exact(&b, &mut marks, &mut fds).unwrap();
        assert_eq!(&marks, b"FF");
        assert_eq!(fds.len(), 300);
        assert_eq!(recv_line(&b, 16).unwrap(), "tail");
        drop(a);
        assert_eq!(recv_line(&b, 16).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
