//! Reassembly and fragmentation with real bytes: a 3000-byte DNS-sized UDP request and
//! an 8000-byte reply, fragmented the way Linux fragments them at MTU 1450.

use super::Limits;
use super::reasm::{Outcome, Pushed, Reassembler};
use super::split::{SplitError, for_each_fragment, split_vxlan};
use crate::core::{DropReason, Now};
use crate::wire::checksum;
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::l4;
use etherparse::PacketBuilder;

const ETH: [u8; 14] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0x08, 0x00];
const T0: Now = Now(1_000_000_000_000);

/// 10.244.1.5:53000 -> 10.250.0.10:53, `n` payload bytes, IP ID `id`, DF clear.
fn datagram(n: usize, id: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..n).map(|i| (i * 13 + usize::from(id)) as u8).collect();
    let mut v = Vec::new();
    PacketBuilder::ipv4([10, 244, 1, 5], [10, 250, 0, 10], 64).udp(53000, 53).write(&mut v, &payload).unwrap();
    v[4..6].copy_from_slice(&id.to_be_bytes());
    v[6] = 0;
    v[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&v[..20]);
    v[10..12].copy_from_slice(&c.to_be_bytes());
    v
}

/// The datagram's fragments at `size`, each as an Ethernet frame.
fn fragments(ip: &[u8], size: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for_each_fragment(ip, size, |h, p| out.push([&ETH[..], h, p].concat())).unwrap();
    out
}

fn push(r: &mut Reassembler, f: &[u8], now: Now, out: &mut [u8]) -> Outcome {
    r.push(f, now, out)
}

fn whole(out: &[u8], o: Outcome) -> Vec<u8> {
    match o.pushed {
        Pushed::Complete { len, .. } => out[14..len].to_vec(),
        p => panic!("not complete: {p:?}"),
    }
}

#[test]
fn fragments_look_like_linux_fragments() {
    let d = datagram(2972, 0x1234); // 3000 bytes of IP
    let f = fragments(&d, 1450);
    // 1424 payload bytes per fragment (1450 - 20, down to a multiple of 8): 1424, 1424, 132.
    let sizes: Vec<usize> = f.iter().map(|x| x.len() - 14).collect();
    assert_eq!(sizes, [1444, 1444, 152]);
    for (k, x) in f.iter().enumerate() {
        let ip = Ipv4Packet::new_checked(&x[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.ident(), 0x1234);
        assert!(ip.is_fragment());
        let field = u16::from_be_bytes([x[20], x[21]]);
        assert_eq!(usize::from(field & 0x1fff) * 8, k * 1424, "fragment {k} offset");
        assert_eq!(field & 0x2000 != 0, k < 2, "MF on all but the last");
    }
    assert_eq!(for_each_fragment(&d, 27, |_, _| {}), Err(SplitError::TooSmall(27)));
}

#[test]
fn in_order_and_out_of_order_reassemble_to_the_original() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = vec![0u8; 14 + 65_535];
    let d = datagram(7972, 7); // the 8000-byte reply
    let f = fragments(&d, 1450);
    assert_eq!(f.len(), 6);
    for x in &f[..5] {
        assert_eq!(push(&mut r, x, T0, &mut out).pushed, Pushed::Held);
    }
    let o = push(&mut r, &f[5], T0, &mut out);
    assert_eq!(o.pushed, Pushed::Complete { len: 14 + 8000, max_frag: 1444 });
    assert_eq!(whole(&out, o), d);
    assert_eq!(&out[..14], &ETH);
    assert!(l4::verify_checksum(&out[14..14 + 8000]));
    assert_eq!(r.held(), (0, 0));
    // Last first, then the rest backwards; and interleaved with a second datagram.
    let d2 = datagram(2972, 8);
    let f2 = fragments(&d2, 1450);
    let mut got = Vec::new();
    for (k, x) in f.iter().rev().enumerate() {
        let o = push(&mut r, x, T0, &mut out);
        if let Some(y) = f2.get(k) {
            let o2 = push(&mut r, y, T0, &mut vec![0u8; 14 + 65_535]);
            if k == 2 {
                assert!(matches!(o2.pushed, Pushed::Complete { len: 3014, .. }));
            }
        }
        if let Pushed::Complete { .. } = o.pushed {
            got = whole(&out, o);
        }
    }
    assert_eq!(got, d);
    assert_eq!(r.held(), (0, 0));
}

#[test]
fn overlaps_are_refused_duplicates_alone() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = vec![0u8; 14 + 65_535];
    let d = datagram(2972, 9);
    let f = fragments(&d, 1450);
    assert_eq!(push(&mut r, &f[0], T0, &mut out).pushed, Pushed::Held);
    // An exact duplicate: dropped, the datagram lives on.
    assert_eq!(push(&mut r, &f[0], T0, &mut out).pushed, Pushed::Dropped(DropReason::FragmentOverlap));
    assert_eq!(r.held(), (1, 1424));
    // A fragment overlapping the first by 8 bytes (offset 1416): the datagram is dropped.
    let mut bad = fragments(&d, 1450)[1].clone();
    bad[20..22].copy_from_slice(&(0x2000u16 | (1416 / 8)).to_be_bytes());
    bad[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&bad[14..34]);
    bad[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(push(&mut r, &bad, T0, &mut out).pushed, Pushed::Dropped(DropReason::FragmentOverlap));
    assert_eq!(r.held(), (0, 0));
    // What follows starts a new datagram that never completes from these pieces alone.
    assert_eq!(push(&mut r, &f[1], T0, &mut out).pushed, Pushed::Held);
    assert_eq!(push(&mut r, &f[2], T0, &mut out).pushed, Pushed::Held);
    // A second "last" fragment that disagrees about the length kills it too.
    let mut short = f[2].clone();
    let field = u16::from_be_bytes([short[20], short[21]]) + 1; // 8 bytes further
    short[20..22].copy_from_slice(&field.to_be_bytes());
    short[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&short[14..34]);
    short[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(push(&mut r, &short, T0, &mut out).pushed, Pushed::Dropped(DropReason::FragmentOverlap));
    assert_eq!(r.held(), (0, 0));
}

#[test]
fn a_datagram_not_whole_within_30_s_times_out() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = vec![0u8; 14 + 65_535];
    let f = fragments(&datagram(2972, 10), 1450);
    assert_eq!(push(&mut r, &f[0], T0, &mut out).pushed, Pushed::Held);
    assert_eq!(push(&mut r, &f[1], Now(T0.0 + 29_000_000_000), &mut out).pushed, Pushed::Held);
    // The last fragment 31 s after the first: its datagram is gone, it starts a new one.
    let o = push(&mut r, &f[2], Now(T0.0 + 31_000_000_000), &mut out);
    assert_eq!(o, Outcome { pushed: Pushed::Held, expired: 1 });
    assert_eq!(r.held(), (1, 132));
    assert_eq!(r.expire(Now(T0.0 + 62_000_000_000)), 1);
    assert_eq!(r.held(), (0, 0));
}

#[test]
fn limits_bound_datagrams_bytes_and_fragments() {
    let limits = Limits { datagrams: 2, bytes: 4000, fragments: 4, ..Limits::default() };
    let mut r = Reassembler::new(limits);
    let mut out = vec![0u8; 14 + 65_535];
    let firsts: Vec<Vec<u8>> = (0..3).map(|id| fragments(&datagram(2972, id), 1450).remove(0)).collect();
    assert_eq!(push(&mut r, &firsts[0], T0, &mut out).pushed, Pushed::Held);
    assert_eq!(push(&mut r, &firsts[1], T0, &mut out).pushed, Pushed::Held);
    assert_eq!(push(&mut r, &firsts[2], T0, &mut out).pushed, Pushed::Dropped(DropReason::FragmentLimit));
    // 2 x 1424 held; a third 1424 would pass 4000 bytes.
    let second = fragments(&datagram(2972, 0), 1450).remove(1);
    assert_eq!(push(&mut r, &second, T0, &mut out).pushed, Pushed::Dropped(DropReason::FragmentLimit));
    // Fragment count: 64-byte fragments, the fifth of one datagram drops it.
    let mut r = Reassembler::new(limits);
    let f = fragments(&datagram(472, 11), 84);
    assert!(f.len() > 5);
    for x in &f[..4] {
        assert_eq!(push(&mut r, x, T0, &mut out).pushed, Pushed::Held);
    }
    assert_eq!(push(&mut r, &f[4], T0, &mut out).pushed, Pushed::Dropped(DropReason::FragmentLimit));
    assert_eq!(r.held(), (0, 0));
}

#[test]
fn malformed_fragments_are_counted_drops() {
    let mut r = Reassembler::new(Limits::default());
    let mut out = vec![0u8; 14 + 65_535];
    let f = fragments(&datagram(2972, 12), 1450);
    // A non-last fragment whose payload is not a multiple of 8.
    let mut odd = f[0].clone();
    odd.truncate(odd.len() - 3);
    let tl = (odd.len() - 14) as u16;
    odd[16..18].copy_from_slice(&tl.to_be_bytes());
    assert_eq!(push(&mut r, &odd, T0, &mut out).pushed, Pushed::Dropped(DropReason::FragmentMalformed));
    // An offset that would end past 65 535 bytes.
    let mut far = f[2].clone();
    far[20..22].copy_from_slice(&0x1fffu16.to_be_bytes());
    assert_eq!(push(&mut r, &far, T0, &mut out).pushed, Pushed::Dropped(DropReason::FragmentMalformed));
    for n in 0..f[1].len() {
        let _ = push(&mut r, &f[1][..n], T0, &mut out);
    }
}

#[test]
fn split_vxlan_lays_out_equal_datagrams_and_copies_options() {
    let d = datagram(7972, 13);
    let mut dgram = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    dgram.extend_from_slice(&ETH);
    dgram.extend_from_slice(&d);
    let mut out = vec![0u8; 96 * 1024];
    let s = split_vxlan(&dgram, 1450, &mut out).unwrap();
    assert_eq!((s.fragments, s.datagram_len), (6, 8 + 14 + 1444));
    let mut r = Reassembler::new(Limits::default());
    let mut whole_out = vec![0u8; 14 + 65_535];
    let mut last = None;
    for k in 0..s.fragments {
        let x = &out[k * s.datagram_len..((k + 1) * s.datagram_len).min(s.len)];
        assert_eq!(&x[..8 + 14], &dgram[..8 + 14]);
        last = Some(r.push(&x[8..], T0, &mut whole_out));
    }
    assert_eq!(whole(&whole_out, last.unwrap()), d);
    assert_eq!(split_vxlan(&dgram, 1450, &mut out[..5000]), Err(SplitError::TooBig));

    // Options: record route (not copied) stays in the first fragment, a copied option
    // (type 0x94, router alert) in all; every header 28 bytes.
    let mut o = d[..20].to_vec();
    o[0] = 0x47;
    o.extend_from_slice(&[0x07, 0x03, 0x04, 0x94, 0x04, 0x00, 0x00, 0x01]);
    o.extend_from_slice(&d[20..]);
    let tl = o.len() as u16;
    o[2..4].copy_from_slice(&tl.to_be_bytes());
    let mut hdrs = Vec::new();
    for_each_fragment(&o, 1450, |h, _| hdrs.push(h.to_vec())).unwrap();
    assert!(hdrs.iter().all(|h| h.len() == 28 && checksum::checksum(h) == 0));
    assert_eq!(&hdrs[0][20..28], &o[20..28]);
    assert_eq!(&hdrs[1][20..28], &[0x94, 0x04, 0x00, 0x00, 0, 0, 0, 0]);
}
