//! Fragmentation of an IPv4 datagram at a size (RFC 791 §3.2, Linux `ip_do_fragment`):
//! every fragment carries a multiple of 8 payload bytes but the last, the first keeps
//! every option, the others only those with the "copied" flag, padded with
//! end-of-options so every fragment has the same header length (and so, but the last,
//! the same size: the VXLAN layout below can leave with one UDP GSO send).

use crate::wire::checksum;
use crate::wire::{ethernet, vxlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("not an IPv4 datagram")]
    NotIpv4,
    #[error("fragment size {0} leaves no room for 8 payload bytes")]
    TooSmall(usize),
    #[error("fragmented output does not fit")]
    TooBig,
}

/// Calls `f(header, payload)` for each fragment of `ip` (an IPv4 datagram, exactly its
/// total length) at IPv4 total length `size` at most; returns the number of fragments.
pub fn for_each_fragment(ip: &[u8], size: usize, mut f: impl FnMut(&[u8], &[u8])) -> Result<usize, SplitError> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(SplitError::NotIpv4);
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if hl < 20 || total < hl || total > ip.len() {
        return Err(SplitError::NotIpv4);
    }
    let step = size.saturating_sub(hl) & !7;
    if step == 0 {
        return Err(SplitError::TooSmall(size));
    }
    let payload = &ip[hl..total];
    let frag0 = u16::from_be_bytes([ip[6], ip[7]]);
    let (off0, mf0) = (frag0 & 0x1fff, frag0 & 0x2000 != 0);
    // The header of the fragments after the first: copied options only, EOL-padded.
    let mut rest = [0u8; 60];
    rest[..20].copy_from_slice(&ip[..20]);
    let mut at = 20;
    let mut o = 20;
    while o < hl {
        let t = ip[o];
        let len = match t {
            0 => break,
            1 => 1,
            _ => usize::from(*ip.get(o + 1).unwrap_or(&0)).max(2),
        };
        if o + len > hl {
            break;
        }
        if t & 0x80 != 0 {
            rest[at..at + len].copy_from_slice(&ip[o..o + len]);
            at += len;
        }
        o += len;
    }
    let count = payload.len().div_ceil(step).max(1);
    let mut hdr = [0u8; 60];
    for k in 0..count {
        let chunk = &payload[k * step..((k + 1) * step).min(payload.len())];
        let h = &mut hdr[..hl];
        h.copy_from_slice(if k == 0 { &ip[..hl] } else { &rest[..hl] });
        h[2..4].copy_from_slice(&((hl + chunk.len()) as u16).to_be_bytes());
        let mf = k + 1 < count || mf0;
        let field = (frag0 & 0xc000) | (off0 + (k * step / 8) as u16) | if mf { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&field.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f(h, chunk);
    }
    Ok(count)
}

/// A datagram's fragments laid out as VXLAN datagrams, back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Bytes written.
    pub len: usize,
    pub fragments: usize,
    /// Size of every datagram but the last.
    pub datagram_len: usize,
}

/// Fragments the inner datagram of `dgram` (VXLAN header + Ethernet + IPv4) at IPv4 total
/// length `size`, each fragment in its own VXLAN datagram with the same VXLAN and
/// Ethernet headers, into `out`.
pub fn split_vxlan(dgram: &[u8], size: usize, out: &mut [u8]) -> Result<Split, SplitError> {
    let outer = vxlan::HEADER_LEN + ethernet::HEADER_LEN;
    let ip = dgram.get(outer..).ok_or(SplitError::NotIpv4)?;
    let mut at = 0;
    let mut first = 0;
    let mut fits = true;
    let n = for_each_fragment(ip, size, |h, p| {
        let len = outer + h.len() + p.len();
        if at + len > out.len() {
            fits = false;
            return;
        }
        if first == 0 {
            first = len;
        }
        out[at..at + outer].copy_from_slice(&dgram[..outer]);
        out[at + outer..at + outer + h.len()].copy_from_slice(h);
        out[at + outer + h.len()..at + len].copy_from_slice(p);
        at += len;
    })?;
    if !fits {
        return Err(SplitError::TooBig);
    }
    Ok(Split { len: at, fragments: n, datagram_len: first })
}
