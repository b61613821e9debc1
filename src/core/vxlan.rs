//! flannel's VXLAN device (`flannel.1`): encapsulation towards a peer VTEP and the
//! choice of the socket it leaves from. (The checks a datagram passes before it is
//! decapsulated — VNI, sender, inner MACs, as flannel.1's receive path makes them — are
//! the first steps of the dataplane's walk, in `dataplane`.)
//!
//! On the wire ucanal is byte-compatible with the Linux vxlan driver: the inner
//! frame carries the local VTEP MAC as source and the remote VTEP MAC as destination
//! (from the neighbour entry), the VXLAN header is RFC 7348's with the I flag, and the
//! outer UDP source port is chosen per flow from a hash of the inner headers (the
//! kernel's `udp_flow_src_port`), so ECMP and RSS spread flows. ucanal sends from a
//! pool of UDP sockets on ephemeral ports; the flow hash picks the socket.

use super::Packet;
use crate::wire::ethernet::EthernetFrame;
use crate::wire::{MacAddr, vxlan};

/// Rewrites the inner MACs and prepends the VXLAN header. False if there is no headroom.
pub fn encap(pkt: &mut Packet, vni: u32, local_vtep_mac: MacAddr, remote_vtep_mac: MacAddr) -> bool {
    if let Ok(mut eth) = EthernetFrame::new_checked(pkt.data_mut()) {
        eth.set_dst(remote_vtep_mac);
        eth.set_src(local_vtep_mac);
    }
    if !pkt.push_front(vxlan::HEADER_LEN) {
        return false;
    }
    vxlan::emit(pkt.data_mut(), vni);
    true
}

/// Which of `n` source sockets a flow uses.
#[inline]
pub fn source_index(flow_hash: u32, n: usize) -> usize {
    super::nat::uniform_index(flow_hash, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::HEADROOM;

    #[test]
    fn encap_sets_flannel_macs_and_header() {
        let mut b = vec![0u8; HEADROOM + 60];
        let mut p = Packet::new(&mut b, HEADROOM, HEADROOM + 60);
        let local: MacAddr = "8a:40:90:1c:cf:7e".parse().unwrap();
        let remote: MacAddr = "32:a9:79:6d:0b:b1".parse().unwrap();
        assert!(encap(&mut p, 1, local, remote));
        let d = p.data();
        assert_eq!(d[..8], [0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(d[8..14], remote.0);
        assert_eq!(d[14..20], local.0);
        assert_eq!(d.len(), 68);
    }

    #[test]
    fn source_index_spreads() {
        let mut seen = [0; 8];
        for h in (0..8000u32).map(|i| crate::core::nat::mix64(u64::from(i)) as u32) {
            seen[source_index(h, 8)] += 1;
        }
        assert!(seen.iter().all(|c| (800..1200).contains(c)), "{seen:?}");
    }
}
