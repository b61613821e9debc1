//! `ucanal run`: one node's daemon.
//!
//! Startup validates everything before it creates anything (config, interfaces,
//! namespaces, the socket), then creates the underlay sockets, the host port with its
//! routes and steering rules, and the pods; a failure at any step undoes the steps
//! before it. Runtime changes (pods, services, endpoints) rebuild the table snapshot
//! and publish it. SIGTERM/SIGINT remove everything ucanal created.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

mod cni;

use super::api::{Request, Response, Show};
use super::config::{self, Config, ConfigError, PodSpec};
use super::{probe, show};
use crate::core::nat::conntrack::Conntrack;
use crate::core::nat::service::{Hits, ServiceSpec, ServiceTable};
use crate::core::tables::{NodeInfo, PodPort, Tables};
use crate::core::trace::Trace;
use crate::core::{Counter, Dataplane, HEADROOM, Packet, PortId};
use crate::io::netlink::{self, HostPort, Steer};
use crate::io::observe::Observers;
use crate::io::stats::{self, PortStats};
use crate::io::underlay::Underlay;
use crate::io::worker::{self, Control, WorkerConfig, WorkerHandle};
use crate::io::{clock, sys, tap};
use crate::wire::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// Options of `ucanal run` that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub socket: Option<PathBuf>,
    pub metrics: Option<std::net::SocketAddr>,
}

/// An error of startup, with the exit code it maps to.
#[derive(Debug)]
pub enum RunError {
    /// The config is wrong (exit 2).
    Config(ConfigError),
    /// The machine is not as the config says, or a kernel call failed (exit 1).
    Setup(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "config error: {e}"),
            RunError::Setup(e) => write!(f, "{e}"),
        }
    }
}

fn setup(e: impl std::fmt::Display) -> RunError {
    RunError::Setup(e.to_string())
}

struct PodState {
    spec: PodSpec,
    port: PortId,
    ifname: String,
    /// Set when a CNI plugin attached it.
    cni: Option<cni::Attachment>,
}

pub struct Daemon {
    cfg: Config,
    node: NodeInfo,
    pub dp: Arc<Dataplane>,
    pub obs: Arc<Observers>,
    pub stats: Arc<PortStats>,
    workers: Vec<WorkerHandle>,
    pods: Vec<PodState>,
    free_ports: Vec<u32>,
    next_port: u32,
    hits: HashMap<(String, Option<SocketAddrV4>), Arc<Hits>>,
    generation: u64,
    seed: u64,
    tx_ports: Vec<u16>,
    steers: BTreeSet<Steer>,
    /// CNI attachments' addresses (ucanal's default IPAM), kept in a state file.
    leases: super::leases::LeaseFile,
}

/// Runs the daemon until SIGTERM/SIGINT. Blocks the calling thread.
pub fn run(config_path: &std::path::Path, opts: RunOptions) -> Result<(), RunError> {
    let mut cfg = Config::load(config_path).map_err(RunError::Config)?;
    if let Some(s) = &opts.socket {
        cfg.api.socket = s.clone();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(setup)?;
    rt.block_on(async move {
        let daemon = start(cfg).await?;
        let socket = daemon.cfg.api.socket.clone();
        let daemon = Arc::new(Mutex::new(daemon));
        let listener = bind_socket(&socket).map_err(setup)?;
        tracing::info!(socket = %socket.display(), "ready");
        if let Some(addr) = opts.metrics {
            let d = daemon.clone();
            let src = {
                let g = d.lock().await;
                super::metrics::Source { node: g.node.name.clone(), dp: g.dp.clone(), stats: g.stats.clone() }
            };
            if let Err(e) = super::metrics::serve(addr, src).await {
                let mut g = daemon.lock().await;
                g.teardown().await;
                let _ = std::fs::remove_file(&socket);
                return Err(setup(format!("--metrics {addr}: {e}")));
            }
        }
        let sweeper = {
            let d = daemon.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let dp = d.lock().await.dp.clone();
                    let n = dp.conntrack.sweep(clock::now());
                    let last = dp.counters.workers() - 1;
                    dp.counters.add(last, Counter::CtExpired, n as u64);
                }
            })
        };
        let server = {
            let d = daemon.clone();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            let d = d.clone();
                            tokio::spawn(async move { serve_client(stream, d).await });
                        }
                        Err(e) => tracing::warn!("accept: {e}"),
                    }
                }
            })
        };
        wait_for_signal().await;
        tracing::info!("stopping");
        server.abort();
        sweeper.abort();
        let mut d = daemon.lock().await;
        d.teardown().await;
        let _ = std::fs::remove_file(&socket);
        tracing::info!("stopped; everything ucanal created is removed");
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Binds the API socket: mode 0600 in a 0700 directory. A live daemon on the path
/// is an error; a stale socket file is replaced.
fn bind_socket(path: &std::path::Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("api.socket: another ucanal is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Create it unreadable for others from the first instant.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let l = l.map_err(|e| io::Error::new(e.kind(), format!("api.socket {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Checks the machine against the config before anything is created.
async fn preflight(cfg: &Config) -> Result<(), RunError> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(setup("/dev/net/tun is missing (is the tun module loaded?)"));
    }
    let uplink = cfg.node.uplink.clone();
    let host_port = cfg.node.host_port.clone();
    let node_ip = cfg.node.node_ip;
    let (uplink_idx, exists) = netlink::with_handle(async |h| {
        let idx = match netlink::link_index(h, &uplink).await {
            Ok(i) => Some(i),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok((idx, netlink::link_exists(h, &host_port).await?))
    })
    .map_err(setup)?;
    let Some(idx) = uplink_idx else {
        return Err(RunError::Config(ConfigError {
            field: "node.uplink".into(),
            problem: format!("interface {uplink} not found"),
        }));
    };
    let addrs = netlink::with_handle(async |h| netlink::link_addrs(h, idx).await).map_err(setup)?;
    if !addrs.contains(&node_ip) {
        return Err(RunError::Config(ConfigError {
            field: "node.node_ip".into(),
            problem: format!("{node_ip} is not an address of {uplink} (it has {addrs:?})"),
        }));
    }
    if exists {
        return Err(RunError::Config(ConfigError {
            field: "node.host_port".into(),
            problem: format!("an interface named {host_port} already exists (is another ucanal running?)"),
        }));
    }
    for (i, p) in cfg.pods.iter().enumerate() {
        if !p.netns_path().exists() {
            return Err(RunError::Config(ConfigError {
                field: format!("pods[{i}].netns"),
                problem: format!("{} does not exist", p.netns_path().display()),
            }));
        }
    }
    if cfg.api.socket.exists() && std::os::unix::net::UnixStream::connect(&cfg.api.socket).is_ok() {
        return Err(RunError::Config(ConfigError {
            field: "api.socket".into(),
            problem: format!("another ucanal is listening on {}", cfg.api.socket.display()),
        }));
    }
    Ok(())
}

fn workers_for(cfg: &Config) -> usize {
    if cfg.dataplane.workers > 0 {
        cfg.dataplane.workers
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        return clock::now().0 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

async fn start(cfg: Config) -> Result<Daemon, RunError> {
    preflight(&cfg).await?;
    let node = cfg.node_info();
    let lease_path = super::leases::LeaseFile::path_for(&cfg.api.socket);
    let leases = super::leases::LeaseFile::load(lease_path, node.pod_cidr, node.vtep_ip).map_err(setup)?;
    let n_workers = workers_for(&cfg);
    let tech = cfg.dataplane.techniques();
    let underlay = Underlay::open(node.node_ip, node.vxlan_port, n_workers, cfg.dataplane.source_ports, tech.udp_gro)
        .map_err(setup)?;
    let host_fds = tap::open(&cfg.node.host_port, n_workers, tech.tap_offloads).map_err(setup)?;

    let mut d = Daemon {
        node: node.clone(),
        dp: Arc::new(Dataplane::new(
            Tables::build(0, node.clone(), 0, &[], &[], ServiceTable::default()),
            Conntrack::new(cfg.conntrack.max, cfg.conntrack.timeouts),
            n_workers + 1,
        )),
        obs: Arc::new(Observers::new(node.name.clone())),
        stats: Arc::new(PortStats::new(n_workers)),
        workers: Vec::new(),
        pods: Vec::new(),
        free_ports: Vec::new(),
        next_port: 1,
        hits: HashMap::new(),
        generation: 0,
        seed: random_seed(),
        tx_ports: underlay.tx_ports.clone(),
        steers: BTreeSet::new(),
        leases,
        cfg: Config { pods: Vec::new(), ..cfg.clone() },
    };
    if let Err(e) = d.configure_node().await {
        d.teardown().await;
        return Err(e);
    }
    d.rebuild();
    let tx = Arc::new(underlay.tx);
    let wcfg = WorkerConfig {
        batch: cfg.dataplane.batch,
        udp_gso: tech.udp_gso,
        gro: tech.gro,
        busy_poll_us: cfg.dataplane.busy_poll_us,
        vxlan_port: node.vxlan_port,
    };
    for (i, (rx, host_fd)) in underlay.rx.into_iter().zip(host_fds).enumerate() {
        match worker::spawn(i, d.dp.clone(), rx, tx.clone(), d.obs.clone(), d.stats.clone(), wcfg) {
            Ok(w) => {
                w.send(Control::AddPort { port: PortId::HOST, fd: host_fd });
                d.workers.push(w);
            }
            Err(e) => {
                d.teardown().await;
                return Err(setup(format!("starting worker {i}: {e}")));
            }
        }
    }
    for (i, p) in cfg.pods.iter().enumerate() {
        if let Err(e) = d.add_pod(p.clone()).await {
            d.teardown().await;
            return Err(setup(format!("pods[{i}] ({}): {e}", p.name)));
        }
    }
    tracing::info!(
        node = %node.name, workers = n_workers, batch = cfg.dataplane.batch, techniques = ?tech, pods = d.pods.len(), services = d.cfg.services.len(),
        source_ports = ?d.tx_ports, "dataplane up"
    );
    Ok(d)
}

impl Daemon {
    /// The node's kernel side: sysctls, host port addresses and routes, steering rules.
    async fn configure_node(&mut self) -> Result<(), RunError> {
        let n = &self.node;
        let hp = self.cfg.node.host_port.clone();
        let set = |k: &[&str], v: &str| netlink::sysctl(k, v).map_err(setup);
        if netlink::sysctl_read(&["net", "ipv4", "ip_forward"]).map_err(setup)? != "1" {
            tracing::info!("enabling net.ipv4.ip_forward (the node forwards between its uplink and ucanal)");
            set(&["net", "ipv4", "ip_forward"], "1")?;
        }
        if netlink::sysctl_read(&["net", "ipv4", "conf", "all", "rp_filter"]).map_err(setup)? == "1" {
            tracing::info!("net.ipv4.conf.all.rp_filter 1 -> 2 (loose): replies from ucanal arrive on the host port");
            set(&["net", "ipv4", "conf", "all", "rp_filter"], "2")?;
        }
        set(&["net", "ipv4", "conf", &hp, "rp_filter"], "0")?;
        set(&["net", "ipv4", "conf", &hp, "accept_local"], "1")?;
        let _ = netlink::sysctl(&["net", "ipv6", "conf", &hp, "disable_ipv6"], "1");
        let (lo, hi) = n.masquerade_ports;
        if let Ok(r) = netlink::sysctl_read(&["net", "ipv4", "ip_local_port_range"]) {
            let v: Vec<u16> = r.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if v.len() == 2 && v[0] <= hi && lo <= v[1] {
                tracing::warn!(
                    "net.ipv4.ip_local_port_range {}-{} overlaps node.masquerade_ports {lo}-{hi}: the node's own connections on those ports take a detour through ucanal",
                    v[0],
                    v[1]
                );
            }
        }
        let p = HostPort {
            name: hp.clone(),
            mac: n.host_port_mac,
            mtu: n.mtu,
            vtep_ip: n.vtep_ip,
            node_ip: n.node_ip,
            gateway: n.gateway,
            gateway_mac: n.host_mac,
            cluster_cidr: n.cluster_cidr,
            pod_cidr: n.pod_cidr,
            service_cidr: n.service_cidr,
            table: self.cfg.node.route_table,
        };
        let table = p.table;
        netlink::with_handle(async |h| {
            // A previous ucanal that died without cleaning up may have left rules.
            netlink::del_steers(h, table, None).await?;
            netlink::configure_host_port(h, &p).await?;
            netlink::move_local_rule(h).await
        })
        .map_err(setup)?;
        self.sync_steers().await.map_err(setup)
    }

    /// The steering rules the current services need: NodePorts, and the replies to
    /// flows masqueraded to the node IP.
    fn wanted_steers(&self) -> BTreeSet<Steer> {
        let (lo, hi) = self.node.masquerade_ports;
        let mut s = BTreeSet::from([
            Steer { proto: PROTO_TCP, ports: Some((lo, hi)) },
            Steer { proto: PROTO_UDP, ports: Some((lo, hi)) },
            Steer { proto: PROTO_ICMP, ports: None },
        ]);
        for svc in &self.cfg.services {
            if let Some(np) = svc.node_port {
                s.insert(Steer { proto: svc.protocol.number(), ports: Some((np, np)) });
            }
        }
        s
    }

    async fn sync_steers(&mut self) -> io::Result<()> {
        let want = self.wanted_steers();
        let add: Vec<Steer> = want.difference(&self.steers).copied().collect();
        let del: Vec<Steer> = self.steers.difference(&want).copied().collect();
        if add.is_empty() && del.is_empty() {
            return Ok(());
        }
        let (uplink, ip, table) = (self.node.uplink.clone(), self.node.node_ip, self.cfg.node.route_table);
        tokio::task::block_in_place(|| {
            netlink::with_handle(async |h| {
                for s in &add {
                    netlink::add_steer(h, &uplink, ip, table, *s).await?;
                }
                if !del.is_empty() {
                    netlink::del_steers(h, table, Some(&del)).await?;
                }
                Ok(())
            })
        })?;
        self.steers = want;
        Ok(())
    }

    /// Builds and publishes a new snapshot from the current pods, peers and services.
    fn rebuild(&mut self) {
        self.generation += 1;
        let pods: Vec<PodPort> = self
            .pods
            .iter()
            .map(|p| PodPort {
                name: p.spec.name.clone(),
                netns: p.spec.netns.clone(),
                ip: p.spec.ip,
                mac: p.spec.mac(),
                port: p.port,
                ifname: p.ifname.clone(),
            })
            .collect();
        let hits = &mut self.hits;
        let services = ServiceTable::build(self.cfg.services.iter().cloned(), |name, ep| {
            hits.entry((name.to_string(), ep)).or_insert_with(|| Arc::new(Hits::default())).clone()
        });
        let mut t = Tables::build(self.generation, self.node.clone(), self.seed, &pods, &self.cfg.peers, services);
        t.vxlan_source_ports = self.tx_ports.clone();
        self.dp.publish(t);
    }

    fn alloc_port(&mut self) -> PortId {
        if let Some(p) = self.free_ports.pop() {
            return PortId(p);
        }
        self.next_port += 1;
        PortId(self.next_port - 1)
    }

    pub async fn add_pod(&mut self, spec: PodSpec) -> Result<String, String> {
        config::check_pod(&self.cfg, &spec).map_err(|e| format!("pod.{e}"))?;
        if self.pods.iter().any(|p| p.spec.name == spec.name) {
            return Err(format!("pod {} exists already", spec.name));
        }
        if let Some(o) = self.pods.iter().find(|p| p.spec.ip == spec.ip) {
            return Err(format!("{} is already pod {}'s address", spec.ip, o.spec.name));
        }
        let path = spec.netns_path();
        if !path.exists() {
            return Err(format!("pod.netns: {} does not exist", path.display()));
        }
        let (mac, mtu, ip, gw) = (spec.mac(), self.node.mtu, spec.ip, self.node.gateway);
        let queues = self.workers.len();
        let offloads = self.cfg.dataplane.techniques().tap_offloads;
        let ifname = spec.ifname().to_string();
        let fds: Vec<OwnedFd> = tokio::task::block_in_place(|| {
            sys::in_netns(&path, move || {
                // TUNSETIFF would attach to an existing TAP of that name: refuse instead (CNI: "MUST return an error").
                if netlink::with_handle(async |h| netlink::link_exists(h, &ifname).await)? {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{ifname} already exists in the pod"),
                    ));
                }
                let fds = tap::open(&ifname, queues, offloads)?;
                // Pods are IPv4 here; without this the kernel's IPv6 chatter is only counted drops.
                let _ = netlink::sysctl(&["net", "ipv6", "conf", &ifname, "disable_ipv6"], "1");
                netlink::with_handle(async |h| netlink::configure_pod(h, &ifname, mac, mtu, ip, gw).await)?;
                Ok(fds)
            })
        })
        .map_err(|e| e.to_string())?;
        if self.pods.len() + 1 >= stats::MAX_PORTS {
            return Err(format!("this node has {} pods, the most one ucanal serves", self.pods.len()));
        }
        let port = self.alloc_port();
        self.stats.reset(stats::slot(port));
        for (w, fd) in self.workers.iter().zip(fds) {
            w.send(Control::AddPort { port, fd });
        }
        let ifname = spec.port_name();
        let msg =
            format!("pod {} {} attached as {} in {} (port {ifname})", spec.name, spec.ip, spec.ifname(), spec.netns);
        self.pods.push(PodState { spec: spec.clone(), port, ifname, cni: None });
        self.cfg.pods.push(spec);
        self.rebuild();
        tracing::info!("{msg}");
        Ok(msg)
    }

    pub async fn del_pod(&mut self, name: &str) -> Result<String, String> {
        let i = self.pods.iter().position(|p| p.spec.name == name).ok_or_else(|| format!("no pod {name}"))?;
        let p = self.pods.remove(i);
        self.cfg.pods.retain(|s| s.name != name);
        // Unroute first, then release the queues; the TAP goes with its last queue.
        self.rebuild();
        let mut acks = Vec::new();
        for w in &self.workers {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            w.send(Control::RemovePort { port: p.port, done: tx });
            acks.push(rx);
        }
        tokio::task::block_in_place(|| {
            for a in acks {
                let _ = a.recv_timeout(Duration::from_secs(5));
            }
        });
        self.free_ports.push(p.port.0);
        // A later pod with this address must not inherit its flows.
        let ip = p.spec.ip;
        let n = self
            .dp
            .conntrack
            .remove_where(|e| e.original.src == ip || e.original.dst == ip || e.reply.src == ip || e.reply.dst == ip);
        let last = self.dp.counters.workers() - 1;
        self.dp.counters.add(last, Counter::CtFlushedPod, n as u64);
        let msg = format!("pod {name} detached; its {} is removed, {n} flow(s) flushed", p.spec.ifname());
        tracing::info!("{msg}");
        Ok(msg)
    }

    pub async fn set_service(&mut self, s: ServiceSpec) -> Result<String, String> {
        config::check_service(&self.cfg, &s).map_err(|e| format!("service.{e}"))?;
        let clash = self.cfg.services.iter().find(|o| {
            o.name != s.name
                && ((o.protocol, o.cluster_ip, o.port) == (s.protocol, s.cluster_ip, s.port)
                    || (s.node_port.is_some() && (o.protocol, o.node_port) == (s.protocol, s.node_port)))
        });
        if let Some(o) = clash {
            return Err(format!("service {} already uses that cluster IP:port or NodePort", o.name));
        }
        let old = self.cfg.services.iter().position(|o| o.name == s.name);
        let removed: Vec<SocketAddrV4> = match old {
            Some(i) => self.cfg.services[i].endpoints.iter().filter(|e| !s.endpoints.contains(e)).copied().collect(),
            None => Vec::new(),
        };
        let msg = format!(
            "service {} {}:{}/{} with {} endpoint(s)",
            s.name,
            s.cluster_ip,
            s.port,
            s.protocol.name(),
            s.endpoints.len()
        );
        match old {
            Some(i) => self.cfg.services[i] = s.clone(),
            None => self.cfg.services.push(s.clone()),
        }
        self.rebuild();
        self.flush_endpoints(&s, &removed);
        self.sync_steers().await.map_err(|e| e.to_string())?;
        Ok(msg)
    }

    pub async fn del_service(&mut self, name: &str) -> Result<String, String> {
        let i = self.cfg.services.iter().position(|s| s.name == name).ok_or_else(|| format!("no service {name}"))?;
        let s = self.cfg.services.remove(i);
        self.hits.retain(|(n, _), _| n != name);
        self.rebuild();
        self.flush_endpoints(&s, &s.endpoints);
        self.sync_steers().await.map_err(|e| e.to_string())?;
        Ok(format!("service {name} removed"))
    }

    pub async fn endpoint(&mut self, service: &str, ep: SocketAddrV4, add: bool) -> Result<String, String> {
        let mut s = self
            .cfg
            .services
            .iter()
            .find(|s| s.name == service)
            .cloned()
            .ok_or_else(|| format!("no service {service}"))?;
        if add {
            if s.endpoints.contains(&ep) {
                return Err(format!("{ep} is already an endpoint of {service}"));
            }
            s.endpoints.push(ep);
        } else {
            let before = s.endpoints.len();
            s.endpoints.retain(|e| *e != ep);
            if s.endpoints.len() == before {
                return Err(format!("{ep} is not an endpoint of {service}"));
            }
            self.hits.remove(&(service.to_string(), Some(ep)));
        }
        self.set_service(s).await
    }

    /// UDP flows to removed endpoints are dropped from conntrack at once, so their
    /// next datagram picks a remaining endpoint (kube-proxy's `conntrack -D`, without
    /// the window in which the client black-holes). TCP flows are left to fail.
    fn flush_endpoints(&self, s: &ServiceSpec, removed: &[SocketAddrV4]) {
        if removed.is_empty() || s.protocol.number() != PROTO_UDP {
            return;
        }
        let n = self.dp.conntrack.remove_where(|e| {
            e.original.proto == PROTO_UDP
                && e.dnat_target().is_some_and(|t| removed.contains(&t))
                && (e.original.dst == s.cluster_ip || Some(e.original.dport) == s.node_port)
        });
        let last = self.dp.counters.workers() - 1;
        self.dp.counters.add(last, Counter::CtFlushedEndpoint, n as u64);
        tracing::info!(service = %s.name, flows = n, "flushed UDP flows of removed endpoints");
    }

    /// Stops the workers (closing every TAP queue, so the TAPs disappear) and removes
    /// the steering rules; the host port's routes go with the host port.
    pub async fn teardown(&mut self) {
        for w in &mut self.workers {
            w.stop();
        }
        self.workers.clear();
        self.pods.clear();
        let table = self.cfg.node.route_table;
        let hp = self.cfg.node.host_port.clone();
        let r = tokio::task::block_in_place(|| {
            netlink::with_handle(async |h| {
                netlink::del_steers(h, table, None).await?;
                netlink::restore_local_rule(h).await?;
                // Normally gone with its last queue; make sure.
                netlink::delete_link(h, &hp).await
            })
        });
        if let Err(e) = r {
            tracing::error!("cleanup: {e}");
        }
        self.steers.clear();
    }

    fn show(&self, what: Show) -> serde_json::Value {
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
            Show::Node => serde_json::to_value(serde_json::json!({
                "node": t.node,
                "generation": t.generation,
                "workers": self.workers.len(),
                "offloads": self.cfg.dataplane.offloads,
                "techniques": self.cfg.dataplane.techniques(),
                "batch": self.cfg.dataplane.batch,
                "vxlan_source_ports": t.vxlan_source_ports,
                "conntrack": { "entries": self.dp.conntrack.len(), "max": self.dp.conntrack.max() },
            })),
        }
        .unwrap_or(serde_json::Value::Null)
    }

    /// The synthetic trace: the probe's frame through the live tables, dry run.
    fn trace(&self, p: &probe::Probe) -> Result<serde_json::Value, String> {
        let t = self.dp.tables();
        let frame = p.frame(&t)?;
        let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(&frame);
        let mut pkt = Packet::new(&mut buf, HEADROOM, HEADROOM + frame.len());
        let mut tr = Trace::dry_run();
        let last = self.dp.counters.workers() - 1;
        let a = match p.ingress(&t)? {
            probe::Ingress::Port(port) => self.dp.handle_port(last, &t, port, &mut pkt, clock::now(), &mut tr),
            probe::Ingress::Vxlan(peer) => {
                self.dp.handle_vxlan(last, &t, SocketAddrV4::new(peer, 32768), &mut pkt, clock::now(), &mut tr)
            }
        };
        Ok(serde_json::json!({
            "node": self.node.name,
            "steps": tr.steps,
            "result": crate::core::trace::describe(&t, &a),
        }))
    }
}

async fn serve_client(stream: UnixStream, d: Arc<Mutex<Daemon>>) {
    // Root only, twice over: the socket is 0600 and the peer must be uid 0 (or us).
    let allowed = stream.peer_cred().map(|c| c.uid() == 0 || c.uid() == unsafe_geteuid()).unwrap_or(false);
    let (r, mut w) = stream.into_split();
    if !allowed {
        let _ = w
            .write_all(
                format!(
                    "{}\n",
                    serde_json::to_string(&Response::error("permission denied: root only")).unwrap_or_default()
                )
                .as_bytes(),
            )
            .await;
        return;
    }
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(&mut w, &Response::error(format!("bad request: {e}"))).await;
                continue;
            }
        };
        match req {
            Request::TraceLive { filter, count, timeout_ms } => {
                let obs = d.lock().await.obs.clone();
                super::stream::trace_live(&obs, &filter, count, timeout_ms, &mut w).await;
            }
            Request::Capture { port, filter, count, timeout_ms } => {
                let (obs, t) = {
                    let g = d.lock().await;
                    (g.obs.clone(), g.dp.tables())
                };
                let known = matches!(port.as_str(), "host" | "vxlan" | "flannel.1")
                    || t.pods().any(|p| p.name == port || p.ifname == port);
                if !known {
                    let names: Vec<&str> = t.pods().map(|p| p.name.as_str()).collect();
                    let _ = send(
                        &mut w,
                        &Response::error(format!("no port '{port}' (want host, vxlan or a pod: {names:?})")),
                    )
                    .await;
                    continue;
                }
                super::stream::capture(&obs, &port, &filter, count, timeout_ms, &mut w).await;
            }
            req => {
                let resp = handle(&d, req).await;
                if send(&mut w, &resp).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

pub(crate) async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> io::Result<()> {
    let mut s = serde_json::to_string(r).unwrap_or_else(|_| r#"{"ok":false,"error":"unserialisable"}"#.into());
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

async fn handle(d: &Arc<Mutex<Daemon>>, req: Request) -> Response {
    let mut d = d.lock().await;
    let r = match req {
        Request::PodAdd { pod } => d.add_pod(pod).await,
        Request::PodDel { name } => d.del_pod(&name).await,
        Request::ServiceSet { service } => d.set_service(service).await,
        Request::ServiceDel { name } => d.del_service(&name).await,
        Request::EndpointAdd { service, endpoint } => d.endpoint(&service, endpoint, true).await,
        Request::EndpointDel { service, endpoint } => d.endpoint(&service, endpoint, false).await,
        Request::Show { what } => return Response::data(d.show(what)),
        Request::Trace { probe } => return d.trace(&probe).map(Response::data).unwrap_or_else(Response::error),
        Request::CniAdd { attach } => {
            return d.cni_add(attach).await.map(Response::data).unwrap_or_else(Response::error);
        }
        Request::CniDel { container_id, ifname } => d.cni_del(&container_id, &ifname).await,
        Request::CniCheck { container_id, ifname } => {
            return d.cni_check(&container_id, &ifname).map(Response::data).unwrap_or_else(Response::error);
        }
        Request::CniGc { network, valid } => d.cni_gc(&network, &valid).await,
        Request::CniStatus => return Response::data(d.cni_status()),
        Request::TraceLive { .. } | Request::Capture { .. } => {
            return Response::error("streams are served per connection");
        }
    };
    match r {
        Ok(m) => Response::ok(m),
        Err(e) => Response::error(e),
    }
}
