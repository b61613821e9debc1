//! The `ucanal` command line: parses arguments and calls into the library.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ucanal::control::api::{self, Request, Show};
use ucanal::control::config::{Config, PodSpec};
use ucanal::control::daemon::{self, RunError, RunOptions};
use ucanal::control::{client, show};
use ucanal::core::nat::service::{Protocol, ServiceSpec};
use ucanal::wire::MacAddr;

#[derive(Parser)]
#[command(name = "ucanal", version, about = "A userspace Canal-style container-network dataplane")]
struct Cli {
    /// The daemon's API socket (default $UCANAL_SOCKET or /run/ucanal/ucanal.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
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
    },
    /// Validate a config file without running anything.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
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
    /// List a table of the running daemon.
    Show {
        what: Show,
        /// Print the stable JSON form.
        #[arg(long)]
        json: bool,
        /// Counters: include zeros.
        #[arg(long)]
        all: bool,
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
        #[arg(long)]
        endpoint: SocketAddrV4,
    },
    Del {
        #[arg(long)]
        service: String,
        #[arg(long)]
        endpoint: SocketAddrV4,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

fn init_logs(level: Option<&str>) {
    let filter = level
        .map(str::to_string)
        .or_else(|| std::env::var("UCANAL_LOG").ok())
        .unwrap_or_else(|| "info".into());
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = api::socket_path(cli.socket.as_deref());
    let done = |r: Result<String, String>| match r {
        Ok(m) => {
            if !m.is_empty() {
                println!("{m}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ucanal: {e}");
            ExitCode::FAILURE
        }
    };
    match cli.cmd {
        Cmd::Run { config, log_level, metrics } => {
            init_logs(log_level.as_deref());
            match daemon::run(&config, RunOptions { socket: cli.socket, metrics }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ RunError::Config(_)) => {
                    eprintln!("ucanal: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("ucanal: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!("{}: node {} with {} peer(s), {} pod(s), {} service(s): ok", config.display(), c.node.name, c.peers.len(), c.pods.len(), c.services.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ucanal: config error: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Pod { cmd } => {
            let req = match cmd {
                PodCmd::Add { name, netns, ip, mac } => Request::PodAdd { pod: PodSpec { name, netns, ip, mac } },
                PodCmd::Del { name } => Request::PodDel { name },
            };
            done(simple(&socket, &req))
        }
        Cmd::Service { cmd } => {
            let req = match cmd {
                ServiceCmd::Set { name, protocol, cluster_ip, port, node_port, endpoints } => Request::ServiceSet {
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
                    },
                },
                ServiceCmd::Del { name } => Request::ServiceDel { name },
            };
            done(simple(&socket, &req))
        }
        Cmd::Endpoint { cmd } => {
            let req = match cmd {
                EndpointCmd::Add { service, endpoint } => Request::EndpointAdd { service, endpoint },
                EndpointCmd::Del { service, endpoint } => Request::EndpointDel { service, endpoint },
            };
            done(simple(&socket, &req))
        }
        Cmd::Show { what, json, all } => done(show_cmd(&socket, what, json, all)),
    }
}

fn simple(socket: &std::path::Path, req: &Request) -> Result<String, String> {
    client::request(socket, req).map(|r| r.message.unwrap_or_default())
}

fn show_cmd(socket: &std::path::Path, what: Show, json: bool, all: bool) -> Result<String, String> {
    let data = client::request(socket, &Request::Show { what })?.data.unwrap_or_default();
    if json {
        return serde_json::to_string_pretty(&data).map_err(|e| e.to_string());
    }
    let de = |e: serde_json::Error| format!("unexpected listing from ucanal: {e}");
    let text = match what {
        Show::Routes => show::routes_text(&serde_json::from_value::<Vec<show::RouteRow>>(data).map_err(de)?),
        Show::Neigh => show::neigh_text(&serde_json::from_value::<Vec<show::NeighRow>>(data).map_err(de)?),
        Show::Fdb => show::fdb_text(&serde_json::from_value::<Vec<show::FdbRow>>(data).map_err(de)?),
        Show::Pods => {
            let node = client::request(socket, &Request::Show { what: Show::Node })?
                .data
                .and_then(|n| n.pointer("/node/name").and_then(|v| v.as_str()).map(str::to_string))
                .unwrap_or_default();
            show::pods_text(&serde_json::from_value::<Vec<show::PodRow>>(data).map_err(de)?, &node)
        }
        Show::Services => show::services_text(&serde_json::from_value::<Vec<show::ServiceRow>>(data).map_err(de)?),
        Show::Conntrack => {
            let rows = serde_json::from_value::<Vec<show::ConntrackRow>>(data).map_err(de)?;
            eprintln!("conntrack v1.4 (ucanal): {} flow entries have been shown.", rows.len());
            show::conntrack_text(&rows)
        }
        Show::Counters => show::counters_text(&data, all),
        Show::Node => serde_json::to_string_pretty(&data).map_err(|e| e.to_string())?,
    };
    Ok(text.trim_end_matches('\n').to_string())
}

