//! IP fragments through NAT (issue 10 item 5): a UDP ClusterIP service 10.250.0.10:53 ->
//! ghost-ep2's :7000 answers a 3000-byte request with an 8000-byte reply. Both leave
//! their pods as IP fragments (MTU 1450), cross VXLAN, and arrive whole and translated:
//! the endpoint sees every request byte, the client gets every reply byte from
//! 10.250.0.10:53, as through kube-proxy (nf_defrag + NAT).

mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::harness::Suite;
use common::{Background, Lab, text, wait_until};

const SERVER: &str = r#"
import hashlib, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7000))
tail = bytes((i * 7 + 1) % 251 for i in range(8000 - 64))
while True:
    d, a = s.recvfrom(65535)
    s.sendto(hashlib.sha256(d).hexdigest().encode() + tail, a)
"#;

const CLIENT: &str = r#"
import hashlib, socket
tail = bytes((i * 7 + 1) % 251 for i in range(8000 - 64))
for k in range(5):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    req = bytes((i * 13 + k) % 256 for i in range(3000))
    s.sendto(req, ("10.250.0.10", 53))
    d, a = s.recvfrom(65535)
    assert a == ("10.250.0.10", 53), "reply %d from %s" % (k, a)
    assert len(d) == 8000, "reply %d: %d bytes" % (k, len(d))
    assert d[:64] == hashlib.sha256(req).hexdigest().encode(), "request %d did not arrive whole" % k
    assert d[64:] == tail, "reply %d corrupt" % k
    s.close()
print("5 of 5")
"#;

fn main() -> ExitCode {
    let mut suite = Suite::new();
    let whole = "request_and_reply_arrive_whole_and_translated";
    suite
        .group("udp_service_with_fragmented_request_and_reply", &["ss"], Fragments::up)
        .phase(whole, |f| through_the_service(&f.lab))
        .phase_after("reassembled_natted_and_fragmented_again_with_no_drop", &[whole], |f| counted(&f.lab))
        .phase_after("the_flow_is_tracked_with_its_dnat", &[whole], |f| {
            let ct = f.lab.ucanal_ok("centos7-1", &["show", "conntrack"]);
            assert!(
                ct.lines()
                    .any(|l| l.starts_with("udp") && l.contains("dst=10.250.0.10") && l.contains("src=10.244.0.74")),
                "{ct}"
            );
        });
    suite.run()
}

/// The lab, ghost-ep2's server on :7000, and the service 10.250.0.10:53 to it.
struct Fragments {
    _server: Background,
    lab: Lab,
}

impl Fragments {
    fn up() -> Fragments {
        let lab = Lab::up("tf", &[]);
        let server = lab.background("ghost-ep2", &format!("exec python3 -c '{SERVER}'"));
        let up = wait_until(Duration::from_secs(5), || {
            text(&lab.sh("ghost-ep2", "ss -Hlun 'sport = :7000'").stdout).contains("7000")
        });
        assert!(up.is_some(), "the UDP server in ghost-ep2 did not start");
        lab.ucanal_ok(
            "centos7-1",
            &[
                "service",
                "set",
                "--name",
                "kube-system/big-dns",
                "--protocol",
                "udp",
                "--cluster-ip",
                "10.250.0.10",
                "--port",
                "53",
                "--endpoint",
                "10.244.0.74:7000",
            ],
        );
        Fragments { _server: server, lab }
    }
}

/// Five requests of 3000 bytes from ghost-ep1, each answered with 8000 bytes.
fn through_the_service(lab: &Lab) {
    let out = lab.exec("ghost-ep1", &["python3", "-c", CLIENT]);
    assert!(
        out.status.success() && text(&out.stdout).contains("5 of 5"),
        "client: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// centos7-1 reassembled each request (3 fragments from ghost-ep1) and each reply (6
/// fragments by VXLAN), NATed them whole and fragmented them again; nothing dropped.
fn counted(lab: &Lab) {
    let c = lab.counters("centos7-1");
    let d = &c["decisions"];
    assert!(d["fragment_reassembled"].as_u64().unwrap() >= 10, "{d}");
    assert!(d["fragment_held"].as_u64().unwrap() >= 45, "{d}");
    assert!(d["fragmented"].as_u64().unwrap() >= 10, "{d}");
    for r in ["fragment_overlap", "fragment_timeout", "fragment_limit", "fragment_malformed"] {
        assert_eq!(c["drops"][r].as_u64(), Some(0), "{r}: {}", c["drops"]);
    }
}
