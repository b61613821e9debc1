//! Frames captured in the mixed lab (`fixtures/`), for the unit tests of the core and the
//! shell: real bytes as a kernel node and the node's own stack send them.

/// One NodePort download, client 172.16.240.1:55394 -> centos7-1 172.16.240.131:31266 ->
/// ghost-ep2 10.244.0.74:2368 on the kernel node centos7-2 (the service's only endpoint),
/// masqueraded to 10.244.1.0 over VXLAN, veth default offloads. `.host` files are frames
/// ucanal read from `ucanal0` (Ethernet), `.vxlan` files VXLAN payloads it received from
/// 172.16.240.132 (VXLAN header + inner Ethernet frame). See `fixtures/nodeport-tso/README.md`.
pub mod nodeport_tso {
    macro_rules! fixture {
        ($file:literal) => {
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/nodeport-tso/", $file))
        };
    }
    /// The client's SYN, as the node's stack forwards it into `ucanal0`.
    pub const SYN: &[u8] = fixture!("1-syn.host");
    /// ghost-ep2's SYN-ACK to 10.244.1.0:55394, checksum partial.
    pub const SYN_ACK: &[u8] = fixture!("2-syn-ack.vxlan");
    /// The client's ACK and its `GET /big` request.
    pub const ACK: &[u8] = fixture!("3-ack.host");
    pub const GET: &[u8] = fixture!("4-get.host");
    /// A data segment of 1398 bytes (seq 3002..4400 of the reply), IPv4 total length 1450.
    pub const SEGMENT: &[u8] = fixture!("5-segment-3002.vxlan");
    /// The next 2796 bytes (seq 4400..7196) in ONE datagram: a TSO super-packet of two
    /// segments that ghost-ep2's veth carried across whole, IPv4 total length 2848 (over
    /// the VXLAN MTU of 1450), checksum partial.
    pub const TSO: &[u8] = fixture!("6-tso-4400.vxlan");

    /// The client's address and port, the NodePort, the payload of each reply packet.
    pub const CLIENT: ([u8; 4], u16) = ([172, 16, 240, 1], 55394);
    pub const NODE_PORT: ([u8; 4], u16) = ([172, 16, 240, 131], 31266);
    /// Where the TCP payload starts in the `.vxlan` data packets (VXLAN 8, Ethernet 14,
    /// IPv4 20, TCP 32 with the timestamp option).
    pub const VXLAN_PAYLOAD_AT: usize = 8 + 14 + 20 + 32;
}
