//! What the API shows: the kernel-style listings and the synthetic trace, read from
//! the published snapshot and the conntrack table (never from the daemon's own state
//! that updates change).

use std::net::SocketAddrV4;

use crate::api::Show;
use crate::control::daemon::{ControlError, Daemon};
pub mod conntrack;
pub mod listings;
pub mod probe;

use self::listings as show;
use crate::core::trace::Trace;
use crate::core::{HEADROOM, Packet};
use crate::io::clock;

impl Daemon {
    pub(crate) fn show(&self, what: Show) -> serde_json::Value {
        let t = self.dp.tables();
        let hp = &self.cfg.node.host_port;
        match what {
            Show::Routes => serde_json::to_value(show::routes(&t, hp)),
            Show::Neigh => serde_json::to_value(show::neigh(&t)),
            Show::Fdb => serde_json::to_value(show::fdb(&t)),
            Show::Pods => serde_json::to_value(show::pods(&t, &self.stats)),
            Show::Services => serde_json::to_value(show::services(&t)),
            Show::Conntrack => {
                let now = clock::now();
                serde_json::to_value(show::conntrack(&self.dp.conntrack.entries(now), now))
            }
            Show::Counters => Ok(show::counters(&self.dp.counters)),
            Show::Peers => Ok(self.show_peers()),
            Show::Node => serde_json::to_value(serde_json::json!({
                "node": t.node,
                "pod_cidr_from": self.pod_cidr_from,
                "generation": t.generation,
                "workers": self.workers.len(),
                "offloads": self.cfg.dataplane.offloads,
                "techniques": self.cfg.dataplane.techniques(),
                "batch": self.cfg.dataplane.batch,
                "vxlan_source_ports": t.vxlan_source_ports,
                "services": t.services.len(),
                "conntrack": { "entries": self.dp.conntrack.len(), "max": self.dp.conntrack.max() },
                "peers": self.show_peers(),
                "state_file": self.statefile.as_ref().map(|s| s.stats()),
            })),
        }
        .unwrap_or(serde_json::Value::Null)
    }

    /// The synthetic trace: the probe's frame through the live tables, dry run.
    pub(crate) fn trace(&self, p: &probe::Probe) -> Result<serde_json::Value, ControlError> {
        let t = self.dp.tables();
        let frame = p.frame(&t).map_err(ControlError::Probe)?;
        let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(&frame);
        let mut pkt = Packet::new(&mut buf, HEADROOM, HEADROOM + frame.len());
        let mut tr = Trace::dry_run();
        let last = self.api_block();
        let a = match p.ingress(&t).map_err(ControlError::Probe)? {
            probe::Ingress::Port(port) => self.dp.handle_port(last, &t, port, &mut pkt, clock::now(), &mut tr),
            probe::Ingress::Vxlan(peer) => {
                self.dp.handle_vxlan(last, &t, SocketAddrV4::new(peer, 32768), &mut pkt, clock::now(), &mut tr)
            }
        };
        Ok(serde_json::json!({
            "node": self.node.name,
            "steps": tr.steps,
            "result": crate::core::trace::outcome(&t, &a),
        }))
    }
}
