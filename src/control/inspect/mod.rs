//! What the API shows: the kernel-style listings, `show node` and the synthetic trace,
//! read from the published snapshot and the conntrack table (never from the books that
//! updates change).

pub mod conntrack;
pub mod listings;
pub mod probe;

use std::net::SocketAddrV4;

use super::error::ControlError;
use super::state::Daemon;
use crate::api::{
    ConntrackRow, ConntrackSize, CountersReport, FdbRow, NeighRow, NodeReport, PeersReport, PodsReport, Probe,
    RouteRow, TraceReport,
};
use crate::core::trace::Trace;
use crate::core::{Dataplane, HEADROOM, Packet};
use crate::io::clock;

/// `show conntrack`, from the dataplane alone (built without the daemon's lock).
pub fn conntrack_rows(dp: &Dataplane) -> Vec<ConntrackRow> {
    let now = clock::now();
    conntrack::conntrack(&dp.conntrack.entries(now), now)
}

impl Daemon {
    pub fn routes(&self) -> Vec<RouteRow> {
        listings::routes(&self.plane.dp().tables(), &self.cfg.node.host_port)
    }

    pub fn neigh(&self) -> Vec<NeighRow> {
        listings::neigh(&self.plane.dp().tables())
    }

    pub fn fdb(&self) -> Vec<FdbRow> {
        listings::fdb(&self.plane.dp().tables())
    }

    /// The pods, and the node they are on (the table's NODE column).
    pub fn pods_report(&self) -> PodsReport {
        let pods = listings::pods(&self.plane.dp().tables(), self.plane.stats());
        PodsReport { node: self.node.info().name.clone(), pods }
    }

    pub fn counters(&self) -> CountersReport {
        listings::counters(&self.plane.dp().counters)
    }

    pub fn peers_report(&self) -> PeersReport {
        super::cluster::membership::peers_report(self.cluster.as_ref(), &self.cfg.peers)
    }

    pub fn node_report(&self) -> NodeReport {
        let t = self.plane.dp().tables();
        let dp = &self.cfg.dataplane;
        NodeReport {
            node: t.node.clone(),
            pod_cidr_from: self.node.pod_cidr_from().to_string(),
            generation: t.generation,
            workers: self.plane.workers(),
            offloads: dp.offloads,
            techniques: dp.techniques(),
            batch: dp.batch,
            vxlan_source_ports: t.vxlan_source_ports.clone(),
            services: t.services.len(),
            conntrack: ConntrackSize { entries: self.plane.dp().conntrack.len(), max: self.plane.dp().conntrack.max() },
            peers: self.peers_report(),
            state_file: self.persist.as_ref().and_then(|p| p.stats()),
        }
    }

    /// The synthetic trace: the probe's frame through the live tables, dry run.
    pub fn trace(&self, p: &Probe) -> Result<TraceReport, ControlError> {
        let t = self.plane.dp().tables();
        let frame = probe::frame(p, &t)?;
        let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(&frame);
        let mut pkt = Packet::new(&mut buf, HEADROOM, HEADROOM + frame.len());
        let mut tr = Trace::dry_run();
        let (dp, block) = (self.plane.dp(), self.plane.api_block());
        let a = match probe::ingress(p, &t)? {
            probe::Ingress::Port(port) => dp.handle_port(block, &t, port, &mut pkt, clock::now(), &mut tr),
            probe::Ingress::Vxlan(peer) => {
                dp.handle_vxlan(block, &t, SocketAddrV4::new(peer, 32768), &mut pkt, clock::now(), &mut tr)
            }
        };
        Ok(TraceReport {
            node: self.node.info().name.clone(),
            steps: tr.steps,
            result: crate::core::trace::outcome(&t, &a),
        })
    }
}
