//! The `ucanal` command line: parses arguments and calls into the library.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use ucanal::api::{Command, EndpointRef, PodSpec, Show};
use ucanal::cli::target::Target;
use ucanal::cli::trace::{capture, trace_live, trace_probe};
use ucanal::cli::{self, CliError, kubectl};
use ucanal::control::config::Config;
use ucanal::control::daemon::{self, RunOptions};
use ucanal::core::nat::service::{Protocol, ServiceSpec};
use ucanal::wire::MacAddr;

#[derive(Parser)]
#[command(name = "ucanal", version = env!("UCANAL_VERSION"), about = "A userspace Canal-style container-network dataplane")]
struct Cli {
    /// Reach the daemon at this socket file (default: $UCANAL_SOCKET; else the daemon of
    /// this network namespace, then /run/ucanal/ucanal.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Reach the daemon of this node: a network namespace name or path, a lab node name
    /// (namespace $LAB_PREFIX+NAME, uc-NAME by default) or a socket file. Repeat it for
    /// `trace --live` on several nodes.
    #[arg(long = "node", global = true)]
    nodes: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the dataplane of one node (until SIGTERM/SIGINT).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Log filter: error, warn, info, debug, trace, or a tracing directive (default $UCANAL_LOG or info).
        #[arg(long)]
        log_level: Option<String>,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9300).
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Restart/upgrade mode: SIGTERM leaves the node steered to ucanal (rules, host port,
        /// pods' eth0) and hands runtime state and conntrack to the next `ucanal run
        /// --keep-on-exit`; SIGINT still removes everything.
        #[arg(long)]
        keep_on_exit: bool,
        /// With --keep-on-exit: after SIGTERM, forward on for this many milliseconds
        /// while waiting for the next `ucanal run --keep-on-exit` to take the live TAP
        /// queues and sockets over (no frame dropped); 0 exits at once.
        #[arg(long = "handover-wait", value_name = "MS", default_value_t = 3000)]
        handover_wait_ms: u64,
        /// Listen on this socket file (default: the config's api.socket). The daemon
        /// also listens on @ucanal in its network namespace.
        #[arg(long)]
        listen: Option<PathBuf>,
    },
    /// Validate a config file without running anything: the file, then what `run` would
    /// check on the machine (the socket's directory; in the node's network namespace,
    /// given with --netns or the one this runs in: the uplink and its address, the
    /// host port, the pods' namespaces).
    Check {
        #[arg(long)]
        config: PathBuf,
        /// The node's network namespace (a name under /run/netns or a path).
        #[arg(long)]
        netns: Option<String>,
    },
    /// Print the process id of the daemon a socket or node names (for `kill`).
    Pid,
    /// Attach or detach a pod at runtime.
    Pod {
        #[command(subcommand)]
        cmd: PodCmd,
    },
    /// Create, replace or remove a service at runtime.
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// Add or remove one endpoint of a service.
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Follow packets through the dataplane: a described packet through the live
    /// tables (nothing is sent), or --live the next real packets that match a filter.
    Trace {
        /// Where the described packet enters: host, vxlan[:<peer IP>], or a pod name.
        #[arg(long = "in", default_value = "host")]
        ingress: String,
        /// TCP flags of the described packet (S, SA, A, F, R, PA).
        #[arg(long)]
        flags: Option<String>,
        /// Trace real packets instead of a described one.
        #[arg(long)]
        live: bool,
        /// tcpdump-style filter for --live (e.g. "tcp and port 31266").
        #[arg(long, default_value = "")]
        filter: String,
        /// Packets to trace with --live, per node.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Give up after this many seconds (--live; 0 = wait).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        #[arg(long)]
        json: bool,
        /// The described packet: <tcp|udp|icmp> <src ip:port> -> <dst ip:port>.
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        flow: Vec<String>,
    },
    /// Capture frames crossing a port into a pcap file (tcpdump/tshark read it).
    Capture {
        /// A pod name, vxlan (outer + inner frames) or host.
        #[arg(long)]
        port: String,
        /// The pcap file to write ("-" for stdout).
        #[arg(short = 'w', long = "write")]
        write: PathBuf,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value = "")]
        filter: String,
        /// Stop after this many seconds (0 = when --count frames are written).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    /// Apply Kubernetes manifests (Service, Endpoints, EndpointSlice; YAML or JSON):
    /// through etcd to every node in a cluster, else to this node.
    Apply(kubectl::Manifest),
    /// Delete the objects a manifest names.
    Delete(kubectl::Manifest),
    /// List applied objects: services or endpoints.
    Get(kubectl::GetArgs),
    /// Print the shell completion script of ucanal (e.g. `source <(ucanal completions bash)`).
    Completions { shell: clap_complete::Shell },
    /// Print ucanal's manual page (roff: `ucanal man | man -l -`).
    Man,
    /// Check a lab topology file (netns-scripts/lab.sh up --topology), print its plan or
    /// its Graphviz graph.
    Topology(ucanal::lab::topology::Args),
    /// List a table of the running daemon.
    Show {
        what: Show,
        /// Print the stable JSON form.
        #[arg(long)]
        json: bool,
        /// Counters: include zeros.
        #[arg(long)]
        all: bool,
        /// Policy: only this pod (NAMESPACE/NAME).
        #[arg(long)]
        pod: Option<String>,
    },
}

#[derive(Subcommand)]
enum PodCmd {
    Add {
        #[arg(long)]
        name: String,
        /// Namespace name under /run/netns, or a path.
        #[arg(long)]
        netns: String,
        #[arg(long)]
        ip: Ipv4Addr,
        #[arg(long)]
        mac: Option<MacAddr>,
        /// The pod's Kubernetes namespace, for network policy (default: `default`).
        #[arg(long)]
        namespace: Option<String>,
        /// A label for network policy, KEY=VALUE (repeat for more).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    Del {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    Set {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: ProtoArg,
        #[arg(long)]
        cluster_ip: Ipv4Addr,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        node_port: Option<u16>,
        /// An endpoint ip:port; repeat for more.
        #[arg(long = "endpoint")]
        endpoints: Vec<SocketAddrV4>,
    },
    Del {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    Add {
        #[arg(long)]
        service: String,
        #[command(flatten)]
        target: EndpointTarget,
    },
    Del {
        #[arg(long)]
        service: String,
        #[command(flatten)]
        target: EndpointTarget,
    },
}

/// An endpoint by address, or by the name of a pod on the same node.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct EndpointTarget {
    #[arg(long)]
    endpoint: Option<SocketAddrV4>,
    /// A pod of this node and a port: <pod name>:<port> (e.g. default/web:2368).
    #[arg(long)]
    pod: Option<String>,
}

impl EndpointTarget {
    /// The endpoint as the daemon takes it (a pod's address is the daemon's to find).
    fn endpoint(&self) -> Result<EndpointRef, CliError> {
        match (&self.endpoint, &self.pod) {
            (Some(e), _) => Ok(EndpointRef::Address(*e)),
            (None, Some(p)) => {
                let (name, port) = cli::parse_pod_port(p)?;
                Ok(EndpointRef::Pod { pod: name.to_string(), port })
            }
            (None, None) => Err(CliError::Usage("give --endpoint or --pod".into())),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

fn init_logs(level: Option<&str>) {
    let filter =
        level.map(str::to_string).or_else(|| std::env::var("UCANAL_LOG").ok()).unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("ucanal: bad log filter '{filter}' ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// A listing piped into `head` ends quietly when the reader goes, as `cat` and `ip`
/// do: the default SIGPIPE action (Rust ignores it, and `println!` would panic on EPIPE).
/// Never for `run`: the daemon must survive a closed API peer or log pipe.
fn quiet_on_closed_stdout() {
    // SAFETY: sets a signal disposition to its default, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run { .. }) {
        quiet_on_closed_stdout();
    }
    let targets = Target::from_flags(cli.socket.as_deref(), &cli.nodes);
    let one = || match targets.as_slice() {
        [t] => Ok(t.clone()),
        _ => Err(CliError::Usage(format!("name one node ({} given with --socket/--node)", targets.len()))),
    };
    let done = |r: Result<String, CliError>| match r {
        Ok(m) => {
            if !m.is_empty() {
                println!("{m}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ucanal: {e}");
            ExitCode::from(e.exit_code())
        }
    };
    match cli.cmd {
        Cmd::Run { config, log_level, metrics, listen, keep_on_exit, handover_wait_ms } => {
            init_logs(log_level.as_deref());
            run(
                &config,
                RunOptions {
                    socket: listen.or(cli.socket),
                    metrics,
                    keep_on_exit,
                    handover_wait: std::time::Duration::from_millis(handover_wait_ms),
                },
            )
        }
        Cmd::Check { config, netns } => check(&config, netns.as_deref()),
        Cmd::Pid => done(one().and_then(|t| cli::show::pid(&t))),
        cmd @ (Cmd::Pod { .. } | Cmd::Service { .. } | Cmd::Endpoint { .. }) => {
            done(one().and_then(|t| object_cmd(&t, cmd)))
        }
        Cmd::Show { what: Show::Policy, json, pod, .. } => {
            done(one().and_then(|t| cli::show::show_policy(&t, json, pod.as_deref())))
        }
        Cmd::Show { what, json, all, .. } => done(one().and_then(|t| cli::show::show(&t, what, json, all))),
        Cmd::Apply(m) => done(one().and_then(|t| kubectl::apply(&t, &m.file, false))),
        Cmd::Delete(m) => done(one().and_then(|t| kubectl::apply(&t, &m.file, true))),
        Cmd::Get(g) => done(one().and_then(|t| kubectl::get(&t, &g.what, g.output.as_deref()))),
        Cmd::Trace { ingress, flags, live, filter, count, timeout, json, flow } => {
            if live {
                done(trace_live(&targets, &filter, count, timeout, json))
            } else {
                done(one().and_then(|t| trace_probe(&t, ingress, flags, &flow, json)))
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ucanal", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => done(Err(CliError::File { what: "writing the manual page".into(), source: e })),
        },
        Cmd::Topology(a) => ucanal::lab::topology::run(&a),
        Cmd::Capture { port, write, count, filter, timeout } => {
            done(one().and_then(|t| capture(&t, &port, &write, count, &filter, timeout)))
        }
    }
}

/// `ucanal run`: exit 2 for a config error, 1 for any other failure.
fn run(config: &std::path::Path, opts: RunOptions) -> ExitCode {
    match daemon::run(config, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ucanal: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `ucanal check`: loads and validates a config, then checks the machine as `run`
/// would (exit 2 when either is wrong).
fn check(config: &std::path::Path, netns: Option<&str>) -> ExitCode {
    use ucanal::control::check::{self, Finding};
    let c = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ucanal: config error: {e}");
            return ExitCode::from(2);
        }
    };
    let ns = netns.map(|n| if n.contains('/') { PathBuf::from(n) } else { std::path::Path::new("/run/netns").join(n) });
    let findings = check::machine(&c, ns.as_deref());
    let mut faults = 0;
    for f in &findings {
        match f {
            Finding::Ok(m) => println!("ok: {m}"),
            Finding::Note(m) => println!("note: {m}"),
            Finding::Fault(e) => {
                faults += 1;
                eprintln!("ucanal: config error: {e}");
            }
        }
    }
    if faults > 0 {
        return ExitCode::from(2);
    }
    println!(
        "{}: node {} with {} peer(s), {} pod(s), {} service(s): ok",
        config.display(),
        c.node.name,
        c.peers.len(),
        c.pods.len(),
        c.services.len()
    );
    ExitCode::SUCCESS
}

/// `--label KEY=VALUE`.
fn parse_label(s: &str) -> Result<(String, String), CliError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(CliError::Usage(format!("'{s}' is not KEY=VALUE"))),
    }
}

/// `ucanal pod|service|endpoint ...`: one command to one node.
fn object_cmd(target: &Target, cmd: Cmd) -> Result<String, CliError> {
    let c = match cmd {
        Cmd::Pod { cmd: PodCmd::Add { name, netns, ip, mac, namespace, labels } } => {
            let labels = labels.into_iter().collect();
            Command::PodAdd { pod: PodSpec { name, netns, ip, mac, ifname: None, namespace, labels } }
        }
        Cmd::Pod { cmd: PodCmd::Del { name } } => Command::PodDel { name },
        Cmd::Service { cmd: ServiceCmd::Set { name, protocol, cluster_ip, port, node_port, endpoints } } => {
            Command::ServiceSet {
                service: ServiceSpec {
                    name,
                    protocol: match protocol {
                        ProtoArg::Tcp => Protocol::Tcp,
                        ProtoArg::Udp => Protocol::Udp,
                    },
                    cluster_ip,
                    port,
                    node_port,
                    endpoints,
                    ..ServiceSpec::default()
                },
            }
        }
        Cmd::Service { cmd: ServiceCmd::Del { name } } => Command::ServiceDel { name },
        Cmd::Endpoint { cmd: EndpointCmd::Add { service, target: ep } } => {
            Command::EndpointAdd { service, endpoint: ep.endpoint()? }
        }
        Cmd::Endpoint { cmd: EndpointCmd::Del { service, target: ep } } => {
            Command::EndpointDel { service, endpoint: ep.endpoint()? }
        }
        _ => return Err(CliError::Usage("not a pod, service or endpoint command".into())),
    };
    cli::command(target, c)
}
