//! The hand-over messages between an old ucanal and its successor, on the API socket:
//!
//! ```text
//! new -> old  {"op":"handover","ask":{"version":1,"workers":2,...}}\n   (an API request line)
//! old -> new  {"ok":true,...}\n  or  {"ok":false,"error":"hand-over refused: ..."}\n
//!             (the new one adopts the node's rules and routes while the old one forwards)
//! new -> old  go\n
//! old -> new  the offer, its fds in SCM_RIGHTS messages:
//!             "UCANALHO" version(u16 BE) 0(u16) entries_len fds state_len conntrack_len (u32 BE each)
//!             entries: fds x { kind(u8) index(u16 BE) name_len(u16 BE) name }
//!             ceil(fds / 250) x { one byte 'F' carrying up to 250 fds }
//!             state (the JSON of `persist::State`), conntrack (a `core::nat::checkpoint`)
//! new -> old  running\n   (its workers run on the fds; the old one exits without a teardown)
//! ```
//!
//! The ask itself is the API's ([`crate::api::Ask`]). This module owns the offer's
//! encoding and its decoder, which checks every length
//! against a bound and names the fault; it never panics on any input (fuzz target
//! `handover`).

/// The version of this exchange; an offer or ask of another version is refused.
pub const VERSION: u16 = 1;
pub const MAGIC: &[u8; 8] = b"UCANALHO";
pub const HEADER_LEN: usize = 28;
/// Fds per SCM_RIGHTS message (the kernel's SCM_MAX_FD is 253).
pub const FDS_PER_MESSAGE: usize = 250;
/// Bounds of the offer's parts: anything larger is a garbled offer.
pub const MAX_FDS: u32 = 1 << 16;
pub const MAX_ENTRIES_LEN: u32 = 1 << 24;
pub const MAX_STATE_LEN: u32 = 1 << 26;
pub const MAX_CONNTRACK_LEN: u32 = 1 << 30;

/// What one handed fd is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The API socket file's listener.
    ApiSocket,
    /// The `@ucanal` abstract listener.
    ApiAbstract,
    /// Worker `n`'s VXLAN receive socket.
    VxlanRx(u16),
    /// VXLAN source socket `n`.
    VxlanTx(u16),
    /// Worker `n`'s queue of the host port.
    HostQueue(u16),
    /// Worker `n`'s queue of a pod's TAP, by pod name.
    PodQueue(u16, String),
}

impl Entry {
    fn kind(&self) -> u8 {
        match self {
            Entry::ApiSocket => 1,
            Entry::ApiAbstract => 2,
            Entry::VxlanRx(_) => 3,
            Entry::VxlanTx(_) => 4,
            Entry::HostQueue(_) => 5,
            Entry::PodQueue(..) => 6,
        }
    }
}

/// The fixed part of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub entries_len: u32,
    pub fds: u32,
    pub state_len: u32,
    pub conntrack_len: u32,
}

impl Header {
    /// SCM_RIGHTS messages (one byte each) that carry the fds.
    pub fn fd_messages(&self) -> usize {
        (self.fds as usize).div_ceil(FDS_PER_MESSAGE)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("hand-over offer: shorter than its {HEADER_LEN}-byte header")]
    Short,
    #[error("hand-over offer: bad magic (not a ucanal hand-over)")]
    Magic,
    #[error("hand-over offer: version {0}, this ucanal speaks version {VERSION}")]
    Version(u16),
    #[error("hand-over offer: {what} is {got}, at most {max}")]
    TooLarge { what: &'static str, got: u32, max: u32 },
    #[error("hand-over offer: entry {index} is cut short")]
    Truncated { index: usize },
    #[error("hand-over offer: entry {index} has unknown kind {kind}")]
    Kind { index: usize, kind: u8 },
    #[error("hand-over offer: entry {index} (kind {kind}) carries an index or a name it cannot have")]
    Extra { index: usize, kind: u8 },
    #[error("hand-over offer: entry {index}: the pod name is not UTF-8")]
    Name { index: usize },
    #[error("hand-over offer: {entries} entries for {fds} fds")]
    Count { entries: usize, fds: u32 },
    #[error("hand-over offer: {0} bytes after the last entry")]
    Trailing(usize),
}

/// The header and entries of an offer (the fds, state and conntrack follow).
pub fn encode(entries: &[Entry], state_len: usize, conntrack_len: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for e in entries {
        let (index, name) = match e {
            Entry::ApiSocket | Entry::ApiAbstract => (0, ""),
            Entry::VxlanRx(n) | Entry::VxlanTx(n) | Entry::HostQueue(n) => (*n, ""),
            Entry::PodQueue(n, name) => (*n, name.as_str()),
        };
        body.push(e.kind());
        body.extend_from_slice(&index.to_be_bytes());
        body.extend_from_slice(&(name.len() as u16).to_be_bytes());
        body.extend_from_slice(name.as_bytes());
    }
    let mut v = Vec::with_capacity(HEADER_LEN + body.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&VERSION.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    for n in [body.len(), entries.len(), state_len, conntrack_len] {
        v.extend_from_slice(&(n as u32).to_be_bytes());
    }
    v.extend_from_slice(&body);
    v
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes the fixed header; every length is checked against its bound.
pub fn decode_header(b: &[u8]) -> Result<Header, OfferError> {
    if b.len() < HEADER_LEN {
        return Err(OfferError::Short);
    }
    if &b[..8] != MAGIC {
        return Err(OfferError::Magic);
    }
    let version = u16::from_be_bytes([b[8], b[9]]);
    if version != VERSION {
        return Err(OfferError::Version(version));
    }
    let h = Header {
        version,
        entries_len: be32(b, 12),
        fds: be32(b, 16),
        state_len: be32(b, 20),
        conntrack_len: be32(b, 24),
    };
    for (what, got, max) in [
        ("entries_len", h.entries_len, MAX_ENTRIES_LEN),
        ("fds", h.fds, MAX_FDS),
        ("state_len", h.state_len, MAX_STATE_LEN),
        ("conntrack_len", h.conntrack_len, MAX_CONNTRACK_LEN),
    ] {
        if got > max {
            return Err(OfferError::TooLarge { what, got, max });
        }
    }
    Ok(h)
}

/// Decodes the entries (`h.entries_len` bytes): exactly one per fd.
pub fn decode_entries(h: &Header, b: &[u8]) -> Result<Vec<Entry>, OfferError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let index = out.len();
        if out.len() >= h.fds as usize {
            return Err(OfferError::Trailing(b.len() - at));
        }
        let Some(fixed) = b.get(at..at + 5) else { return Err(OfferError::Truncated { index }) };
        let (kind, n, len) =
            (fixed[0], u16::from_be_bytes([fixed[1], fixed[2]]), u16::from_be_bytes([fixed[3], fixed[4]]));
        at += 5;
        let Some(name) = b.get(at..at + usize::from(len)) else { return Err(OfferError::Truncated { index }) };
        at += usize::from(len);
        // One encoding per entry: the listeners carry no index, only a pod queue a name.
        if (matches!(kind, 1 | 2) && n != 0) || (matches!(kind, 1..=5) && len != 0) {
            return Err(OfferError::Extra { index, kind });
        }
        let name = std::str::from_utf8(name).map_err(|_| OfferError::Name { index })?;
        out.push(match kind {
            1 => Entry::ApiSocket,
            2 => Entry::ApiAbstract,
            3 => Entry::VxlanRx(n),
            4 => Entry::VxlanTx(n),
            5 => Entry::HostQueue(n),
            6 => Entry::PodQueue(n, name.to_string()),
            kind => return Err(OfferError::Kind { index, kind }),
        });
    }
    if out.len() != h.fds as usize {
        return Err(OfferError::Count { entries: out.len(), fds: h.fds });
    }
    Ok(out)
}

/// Decodes a whole header-and-entries buffer (what [`encode`] wrote).
pub fn decode(b: &[u8]) -> Result<(Header, Vec<Entry>), OfferError> {
    let h = decode_header(b)?;
    let rest = &b[HEADER_LEN..];
    if rest.len() < h.entries_len as usize {
        return Err(OfferError::Truncated { index: 0 });
    }
    let (body, tail) = rest.split_at(h.entries_len as usize);
    if !tail.is_empty() {
        return Err(OfferError::Trailing(tail.len()));
    }
    Ok((h, decode_entries(&h, body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::ApiSocket,
            Entry::ApiAbstract,
            Entry::VxlanRx(0),
            Entry::VxlanRx(1),
            Entry::VxlanTx(0),
            Entry::HostQueue(1),
            Entry::PodQueue(1, "default/ghost-ep1".into()),
        ]
    }

    #[test]
    fn an_offer_round_trips() {
        let b = encode(&sample(), 1234, 56);
        assert_eq!(&b[..8], b"UCANALHO");
        let (h, e) = decode(&b).unwrap();
        assert_eq!(
            h,
            Header {
                version: VERSION,
                entries_len: (b.len() - HEADER_LEN) as u32,
                fds: 7,
                state_len: 1234,
                conntrack_len: 56
            }
        );
        assert_eq!(e, sample());
        assert_eq!(h.fd_messages(), 1);
        assert_eq!(Header { fds: 251, ..h }.fd_messages(), 2);
    }

    #[test]
    fn garbled_offers_name_their_fault() {
        let b = encode(&sample(), 10, 20);
        assert_eq!(decode(&b[..10]), Err(OfferError::Short));
        let mut m = b.clone();
        m[0] = b'X';
        assert_eq!(decode(&m), Err(OfferError::Magic));
        let mut v = b.clone();
        v[9] = 9;
        let e = decode(&v).unwrap_err();
        assert_eq!(e, OfferError::Version(9));
        assert_eq!(e.to_string(), "hand-over offer: version 9, this ucanal speaks version 1");
        let mut big = b.clone();
        big[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&big), Err(OfferError::TooLarge { what: "fds", .. })));
        let mut k = b.clone();
        k[HEADER_LEN] = 77;
        assert_eq!(decode(&k), Err(OfferError::Kind { index: 0, kind: 77 }));
        let mut fewer = b.clone();
        fewer[16..20].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(decode(&fewer), Err(OfferError::Count { entries: 7, fds: 8 }));
        fewer[16..20].copy_from_slice(&6u32.to_be_bytes());
        assert!(matches!(decode(&fewer), Err(OfferError::Trailing(_))));
        // The last entry cut short, with the header still claiming the full length.
        assert!(matches!(decode(&b[..b.len() - 3]), Err(OfferError::Truncated { .. })));
        let mut name = b.clone();
        let end = name.len() - 1;
        name[end] = 0xff;
        assert_eq!(decode(&name), Err(OfferError::Name { index: 6 }));
        // Found by the fuzz campaign: an API listener entry with an index (0x017d) decoded, and
        // re-encoded to other bytes. Every entry has one encoding now.
        let mut extra = encode(&[Entry::ApiSocket], 0, 0);
        extra[HEADER_LEN + 1..HEADER_LEN + 3].copy_from_slice(&[0x01, 0x7d]);
        assert_eq!(decode(&extra), Err(OfferError::Extra { index: 0, kind: 1 }));
        let mut named = encode(&[Entry::VxlanRx(1)], 0, 0);
        named.extend_from_slice(b"x");
        named[HEADER_LEN + 4] = 1;
        named[12..16].copy_from_slice(&6u32.to_be_bytes());
        assert_eq!(decode(&named), Err(OfferError::Extra { index: 0, kind: 3 }));
        let seed = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/handover/listener-with-index"),
        )
        .unwrap();
        assert_eq!(decode(&seed), Err(OfferError::Extra { index: 0, kind: 1 }));
    }

    #[test]
    fn the_seed_corpus_decodes_as_named() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/handover");
        let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
        let (h, e) = decode(&read("lab-centos7-1")).unwrap();
        assert_eq!((h.fds, h.fd_messages()), (2 + 16 + 2 * 4, 1));
        assert!(e.contains(&Entry::PodQueue(1, "ghost-ep1".into())));
        let (h, e) = decode(&read("cni-pods-300-fds")).unwrap();
        assert_eq!((h.fds, h.fd_messages()), (302, 2));
        assert_eq!(encode(&e, h.state_len as usize, h.conntrack_len as usize), read("cni-pods-300-fds"));
        assert!(decode(&read("one-worker-no-pods")).is_ok());
        assert_eq!(decode(&read("bad-version")), Err(OfferError::Version(2)));
        assert_eq!(decode(&read("unknown-kind")), Err(OfferError::Kind { index: 1, kind: 9 }));
        assert!(matches!(decode(&read("cut-short")), Err(OfferError::Truncated { .. })));
    }

    #[test]
    fn the_ask_is_a_strict_json_object() {
        let a = crate::api::Ask { version: VERSION, workers: 2, source_ports: 8, tap_offloads: true, udp_gro: false };
        let s = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<crate::api::Ask>(&s).unwrap(), a);
        assert!(serde_json::from_str::<crate::api::Ask>(r#"{"version":1,"workers":2}"#).is_err());
        assert!(serde_json::from_str::<crate::api::Ask>(&s.replace("}", r#","extra":1}"#)).is_err());
    }
}
