//! flannel's VXLAN L2 state: the neighbour table (`<remote .0> -> VtepMAC`, what
//! `ip neigh show dev flannel.1` lists) and the forwarding database (`VtepMAC ->
//! PublicIP`, what `bridge fdb show dev flannel.1` lists). flannel programs both
//! from each peer's lease, permanently, with learning off: a miss is a drop, never a flood.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::Ipv4Net;
use crate::wire::MacAddr;

#[derive(Debug, Clone, Default)]
pub struct Neighbours {
    map: HashMap<Ipv4Addr, MacAddr, ahash::RandomState>,
}

impl Neighbours {
    pub fn insert(&mut self, ip: Ipv4Addr, mac: MacAddr) {
        self.map.insert(ip, mac);
    }
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.map.get(&ip).copied()
    }
    /// Entries sorted by address.
    pub fn entries(&self) -> Vec<(Ipv4Addr, MacAddr)> {
        let mut v: Vec<_> = self.map.iter().map(|(a, m)| (*a, *m)).collect();
        v.sort();
        v
    }
}

/// The FDB, plus the reverse view the receive path needs: which pod subnet a
/// sending VTEP may carry.
#[derive(Debug, Clone, Default)]
pub struct Fdb {
    by_mac: HashMap<MacAddr, Ipv4Addr, ahash::RandomState>,
    subnet_by_remote: HashMap<Ipv4Addr, Ipv4Net, ahash::RandomState>,
}

impl Fdb {
    pub fn insert(&mut self, mac: MacAddr, remote: Ipv4Addr, subnet: Ipv4Net) {
        self.by_mac.insert(mac, remote);
        self.subnet_by_remote.insert(remote, subnet);
    }
    #[inline]
    pub fn lookup(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        self.by_mac.get(&mac).copied()
    }
    /// The pod subnet of a known remote VTEP; `None` for an unknown sender.
    #[inline]
    pub fn peer_subnet(&self, remote: Ipv4Addr) -> Option<Ipv4Net> {
        self.subnet_by_remote.get(&remote).copied()
    }
    pub fn entries(&self) -> Vec<(MacAddr, Ipv4Addr)> {
        let mut v: Vec<_> = self.by_mac.iter().map(|(m, a)| (*m, *a)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn article_entries() {
        let mac: MacAddr = "32:a9:79:6d:0b:b1".parse().unwrap();
        let mut n = Neighbours::default();
        n.insert(Ipv4Addr::new(10, 244, 0, 0), mac);
        let mut f = Fdb::default();
        f.insert(mac, Ipv4Addr::new(172, 16, 240, 132), "10.244.0.0/24".parse().unwrap());
        assert_eq!(n.lookup(Ipv4Addr::new(10, 244, 0, 0)), Some(mac));
        assert_eq!(f.lookup(mac), Some(Ipv4Addr::new(172, 16, 240, 132)));
        assert_eq!(f.peer_subnet(Ipv4Addr::new(172, 16, 240, 132)).unwrap().to_string(), "10.244.0.0/24");
        assert!(f.peer_subnet(Ipv4Addr::new(172, 16, 240, 1)).is_none());
        assert!(n.lookup(Ipv4Addr::new(10, 244, 2, 0)).is_none());
    }
}
