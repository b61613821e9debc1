//! ucanal's own IPAM: the addresses of CNI attachments, leased from the node's pod CIDR
//! (unless the network config delegates to an IPAM plugin, see `cni::delegate`; not to
//! be confused with flannel's subnet lease of the node itself, see `cluster`).
//!
//! Addresses come from the node's pod CIDR (never its network, broadcast or VTEP
//! address, nor an address a pod already uses), the next free one after the last
//! handed out, as host-local does, so a released address is not reused at once. Each
//! lease names its attachment (network, container id, interface). The table is written
//! to a state file beside the API socket (`<socket stem>.leases.json`) after every
//! change, by write-then-rename, so a restarted daemon never hands out a live address
//! twice; only DEL (or GC) releases one.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address in the pod CIDR {0}")]
    Exhausted(Ipv4Net),
    #[error("{0} is outside the pod CIDR {1}")]
    Outside(Ipv4Addr, Ipv4Net),
    #[error("{0} is the network, broadcast or VTEP address of {1}")]
    Reserved(Ipv4Addr, Ipv4Net),
    #[error("{0} is in use by {1}")]
    InUse(Ipv4Addr, String),
    #[error("lease file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("lease file {path}: {source}")]
    Unreadable { path: PathBuf, source: serde_json::Error },
}

/// One attachment's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressLease {
    pub ip: Ipv4Addr,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The pod's name as `show pods` lists it.
    pub name: String,
    pub netns: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressTable {
    pod_cidr: Ipv4Net,
    vtep_ip: Ipv4Addr,
    /// The address handed out last; the search for a free one starts after it.
    last: Option<Ipv4Addr>,
    leases: BTreeMap<Ipv4Addr, AddressLease>,
}

impl AddressTable {
    pub fn new(pod_cidr: Ipv4Net, vtep_ip: Ipv4Addr) -> AddressTable {
        AddressTable { pod_cidr, vtep_ip, last: None, leases: BTreeMap::new() }
    }

    fn first_last(&self) -> (u32, u32) {
        let net = u32::from(self.pod_cidr.addr());
        let size = 1u64 << (32 - u32::from(self.pod_cidr.prefix_len()));
        if size <= 2 {
            return (net, net + (size as u32 - 1));
        }
        (net + 1, net + (size - 2) as u32)
    }

    fn reserved(&self, ip: Ipv4Addr) -> bool {
        let (lo, hi) = self.first_last();
        ip == self.vtep_ip || !(lo..=hi).contains(&u32::from(ip))
    }

    /// Takes an address for the attachment in `lease` (its `ip` is ignored): `want` if
    /// given and free, else the next free one. `in_use` tells which addresses pods added
    /// otherwise hold. An attachment that already holds a lease gets it back.
    pub fn allocate(
        &mut self,
        mut lease: AddressLease,
        want: Option<Ipv4Addr>,
        in_use: impl Fn(Ipv4Addr) -> Option<String>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(old) = self.find(&lease.container_id, &lease.ifname) {
            if want.is_none_or(|w| w == old.ip) {
                return Ok(old.ip);
            }
            return Err(IpamError::InUse(old.ip, format!("this attachment already ({})", old.name)));
        }
        let taken = |s: &AddressTable, ip: Ipv4Addr| -> Option<String> {
            s.leases.get(&ip).map(|l| format!("{} ({} {})", l.name, l.network, l.ifname)).or_else(|| in_use(ip))
        };
        let ip = match want {
            Some(w) => {
                if !self.pod_cidr.contains(w) {
                    return Err(IpamError::Outside(w, self.pod_cidr));
                }
                if self.reserved(w) {
                    return Err(IpamError::Reserved(w, self.pod_cidr));
                }
                if let Some(by) = taken(self, w) {
                    return Err(IpamError::InUse(w, by));
                }
                w
            }
            None => {
                let (lo, hi) = self.first_last();
                let n = hi - lo + 1;
                let start = self.last.map(u32::from).filter(|l| (lo..=hi).contains(l)).map_or(0, |l| l - lo + 1);
                (0..n)
                    .map(|i| Ipv4Addr::from(lo + (start + i) % n))
                    .find(|&ip| !self.reserved(ip) && taken(self, ip).is_none())
                    .ok_or(IpamError::Exhausted(self.pod_cidr))?
            }
        };
        lease.ip = ip;
        self.leases.insert(ip, lease);
        self.last = Some(ip);
        Ok(ip)
    }

    /// Releases the attachment's lease, if it has one.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Option<AddressLease> {
        let ip = self.find(container_id, ifname)?.ip;
        self.leases.remove(&ip)
    }

    pub fn find(&self, container_id: &str, ifname: &str) -> Option<&AddressLease> {
        self.leases.values().find(|l| l.container_id == container_id && l.ifname == ifname)
    }

    pub fn iter(&self) -> impl Iterator<Item = &AddressLease> {
        self.leases.values()
    }

    /// Addresses still free (for STATUS).
    pub fn free(&self, in_use: impl Fn(Ipv4Addr) -> bool) -> usize {
        let (lo, hi) = self.first_last();
        (lo..=hi)
            .map(Ipv4Addr::from)
            .filter(|&ip| !self.reserved(ip) && !self.leases.contains_key(&ip) && !in_use(ip))
            .count()
    }

    /// Reads a state file; leases outside the current pod CIDR are dropped (the node's
    /// subnet changed, so those attachments cannot be live).
    pub fn parse(text: &str, pod_cidr: Ipv4Net, vtep_ip: Ipv4Addr) -> Result<AddressTable, serde_json::Error> {
        let mut l: AddressTable = serde_json::from_str(text)?;
        l.leases.retain(|ip, lease| lease.ip == *ip && pod_cidr.contains(*ip) && *ip != vtep_ip);
        l.pod_cidr = pod_cidr;
        l.vtep_ip = vtep_ip;
        Ok(l)
    }
}

/// The lease table and the state file that keeps it: every change is written before
/// it is answered, and undone if it cannot be.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    table: AddressTable,
}

impl Ipam {
    /// The state file for an API socket: `<dir>/<stem>.leases.json`.
    pub fn path_for(socket: &Path) -> PathBuf {
        let stem = socket.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "ucanal".into());
        socket.with_file_name(format!("{stem}.leases.json"))
    }

    /// Loads the file, or starts empty when there is none.
    pub fn load(path: PathBuf, pod_cidr: Ipv4Net, vtep_ip: Ipv4Addr) -> Result<Ipam, IpamError> {
        let table = match std::fs::read_to_string(&path) {
            Ok(t) => AddressTable::parse(&t, pod_cidr, vtep_ip)
                .map_err(|source| IpamError::Unreadable { path: path.clone(), source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AddressTable::new(pod_cidr, vtep_ip),
            Err(source) => return Err(IpamError::File { path, source }),
        };
        Ok(Ipam { path, table })
    }

    /// An empty table for `path`, not read yet: while a predecessor still runs, it may
    /// change the file; it is read once it stopped (see [`Ipam::load`]).
    pub fn unread(path: PathBuf, pod_cidr: Ipv4Net, vtep_ip: Ipv4Addr) -> Ipam {
        Ipam { path, table: AddressTable::new(pod_cidr, vtep_ip) }
    }

    pub fn table(&self) -> &AddressTable {
        &self.table
    }

    /// Leases an address (see [`AddressTable::allocate`]) and writes the file; nothing
    /// changes if it cannot be written.
    pub fn lease(
        &mut self,
        lease: AddressLease,
        want: Option<Ipv4Addr>,
        in_use: impl Fn(Ipv4Addr) -> Option<String>,
    ) -> Result<Ipv4Addr, IpamError> {
        let (cid, ifname) = (lease.container_id.clone(), lease.ifname.clone());
        let ip = self.table.allocate(lease, want, in_use)?;
        if let Err(e) = self.save() {
            self.table.release(&cid, &ifname);
            return Err(e);
        }
        Ok(ip)
    }

    /// Releases the attachment's lease, if it has one, and writes the file.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Result<Option<AddressLease>, IpamError> {
        let Some(l) = self.table.release(container_id, ifname) else { return Ok(None) };
        self.save()?;
        Ok(Some(l))
    }

    /// Writes the table: a temporary file, fsync, rename over the old one.
    fn save(&self) -> Result<(), IpamError> {
        use std::io::Write;
        let err = |source: std::io::Error| IpamError::File { path: self.path.clone(), source };
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.table)
            .map_err(|source| IpamError::Unreadable { path: self.path.clone(), source })?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Ipv4Net {
        "10.244.1.0/29".parse().unwrap()
    }

    fn lease(id: &str) -> AddressLease {
        AddressLease {
            ip: Ipv4Addr::UNSPECIFIED,
            network: "ucanal".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
            name: format!("default/{id}"),
            netns: format!("/run/netns/{id}"),
        }
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, last)
    }

    #[test]
    fn allocates_round_robin_skipping_reserved_and_used() {
        // /29: .0 network+VTEP, .7 broadcast; .2 held by a pod added with `pod add`.
        let mut l = AddressTable::new(net(), ip(0));
        let used = |a: Ipv4Addr| (a == ip(2)).then(|| "ghost-ep1".to_string());
        let got: Vec<_> =
            ["a", "b", "c", "d", "e"].iter().map(|id| l.allocate(lease(id), None, used).unwrap()).collect();
        assert_eq!(got, [ip(1), ip(3), ip(4), ip(5), ip(6)]);
        assert!(matches!(l.allocate(lease("f"), None, used), Err(IpamError::Exhausted(n)) if n == net()));
        assert_eq!(l.free(|a| a == ip(2)), 0);
        // A released address is handed out again only after the others.
        assert_eq!(l.release("b", "eth0").unwrap().ip, ip(3));
        assert_eq!(l.release("b", "eth0"), None);
        assert_eq!(l.allocate(lease("g"), None, used).unwrap(), ip(3));
        // The same attachment gets its own lease back.
        assert_eq!(l.allocate(lease("a"), None, used).unwrap(), ip(1));
    }

    #[test]
    fn wanted_addresses_are_checked() {
        let mut l = AddressTable::new(net(), ip(1));
        let none = |_| None;
        assert_eq!(l.allocate(lease("a"), Some(ip(4)), none).unwrap(), ip(4));
        assert!(
            matches!(l.allocate(lease("b"), Some(ip(4)), none), Err(IpamError::InUse(_, by)) if by.contains("default/a"))
        );
        assert!(
            matches!(l.allocate(lease("b"), Some(ip(1)), none), Err(IpamError::Reserved(a, n)) if (a, n) == (ip(1), net()))
        );
        assert!(
            matches!(l.allocate(lease("b"), Some(ip(7)), none), Err(IpamError::Reserved(a, n)) if (a, n) == (ip(7), net()))
        );
        assert!(
            matches!(l.allocate(lease("b"), Some(ip(9)), none), Err(IpamError::Outside(a, n)) if (a, n) == (ip(9), net()))
        );
    }

    #[test]
    fn state_file_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = Ipam::path_for(&dir.path().join("centos7-1.sock"));
        assert!(path.ends_with("centos7-1.leases.json"));
        let mut f = Ipam::load(path.clone(), net(), ip(0)).unwrap();
        f.lease(lease("a"), None, |_| None).unwrap();
        f.lease(lease("b"), None, |_| None).unwrap();
        let mut again = Ipam::load(path.clone(), net(), ip(0)).unwrap();
        assert_eq!(again.table, f.table);
        // The restarted daemon hands out neither live address.
        assert_eq!(again.lease(lease("c"), None, |_| None).unwrap(), ip(3));
        assert_eq!(again.release("c", "eth0").unwrap().map(|l| l.ip), Some(ip(3)));
        let reread = Ipam::load(path.clone(), net(), ip(0)).unwrap();
        assert!(reread.table.iter().eq(f.table.iter()), "the release was written");
        // A changed pod CIDR drops the leases that no longer fit.
        let moved = Ipam::load(path.clone(), "10.244.2.0/24".parse().unwrap(), ip(0)).unwrap();
        assert_eq!(moved.table.iter().count(), 0);
        std::fs::write(&path, "{garbage").unwrap();
        assert!(matches!(Ipam::load(path, net(), ip(0)), Err(IpamError::Unreadable { .. })));
    }
}
