//! The underlay: UDP sockets on the node IP.
//!
//! Receive: one socket per worker bound to `<node IP>:8472` with `SO_REUSEPORT`, so
//! the kernel spreads peers' flows over the workers (and with offloads, `UDP_GRO`).
//! Send: a pool of sockets bound to ephemeral ports (the kernel's local port range, as
//! Linux's vxlan picks source ports from); the inner flow hash picks the socket, which
//! gives each flow a stable outer source port, as `udp_flow_src_port` does. The pool
//! sockets never receive: a one-instruction BPF filter drops anything sent to them.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

/// Socket buffers big enough for a burst of 64 KB GSO batches.
const BUF_BYTES: usize = 8 << 20;

pub struct Underlay {
    pub rx: Vec<UdpSocket>,
    pub tx: Vec<UdpSocket>,
    pub tx_ports: Vec<u16>,
}

fn udp(bind: SocketAddrV4, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    s.set_reuse_port(reuse_port)?;
    s.set_nonblocking(true)?;
    // Root may exceed rmem_max/wmem_max; fall back to the capped size otherwise.
    if super::sys::set_int_opt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, BUF_BYTES as i32).is_err() {
        s.set_recv_buffer_size(BUF_BYTES)?;
    }
    if super::sys::set_int_opt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, BUF_BYTES as i32).is_err() {
        s.set_send_buffer_size(BUF_BYTES)?;
    }
    s.bind(&SocketAddr::V4(bind).into()).map_err(|e| io::Error::new(e.kind(), format!("binding UDP {bind}: {e}")))?;
    Ok(s)
}

impl Underlay {
    pub fn open(node_ip: Ipv4Addr, port: u16, workers: usize, pool: usize, gro: bool) -> io::Result<Underlay> {
        let mut rx = Vec::new();
        for _ in 0..workers.max(1) {
            let s = udp(SocketAddrV4::new(node_ip, port), true)?;
            if gro {
                super::sys::enable_udp_gro(s.as_raw_fd())?;
            }
            rx.push(UdpSocket::from(s));
        }
        let mut tx = Vec::new();
        let mut tx_ports = Vec::new();
        for _ in 0..pool.max(1) {
            let s = udp(SocketAddrV4::new(node_ip, 0), false)?;
            // DF clear on the outer header, as Linux's vxlan sends by default (`df unset`): the
            // conformance suite compares the wire with a kernel flannel.1 header by header.
            super::sys::set_int_opt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT)?;
            // BPF_RET|BPF_K 0: accept nothing.
            s.attach_filter(&[SockFilter::new(0x06, 0, 0, 0)])?;
            let p = s.local_addr()?.as_socket_ipv4().map(|a| a.port()).unwrap_or(0);
            tx_ports.push(p);
            tx.push(UdpSocket::from(s));
        }
        Ok(Underlay { rx, tx, tx_ports })
    }
}
