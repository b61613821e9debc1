//! The plugin's commands: ADD, DEL, CHECK, VERSION, STATUS and GC, each turned into
//! requests to the node's ucanal daemon (its API socket is the config's `socket`) and,
//! when the config has an `ipam` section, calls of that IPAM plugin (SPEC.md section 4).
//!
//! The plugin holds no state of its own: the daemon owns the attachment (the TAP, its
//! queues, the /32 route) and, unless IPAM is delegated, the address lease.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::spec::{
    CniArgs, CniError, CniResult, Command, Interface, Invocation, IpConfig, NetConf, Route, SCOPE_LINK,
    SUPPORTED_VERSIONS, code,
};
use super::{check, delegate};
use crate::api::codec::{Client, ClientError};
use crate::api::{self, CniAttach, CniPod, CniStatus, ErrorCode, Query, Request};

/// How long the plugin waits for the daemon's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// What the plugin prints on stdout and the exit status it ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub status: u8,
}

/// Runs one invocation: `env` reads the process environment, `stdin` is the config.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let version = NetConf::version_of(stdin);
    let fail = |e: CniError, v: &str| {
        eprintln!("ucanal-cni: {e}");
        Outcome { stdout: format!("{}\n", e.to_json(v)), status: 1 }
    };
    if env("CNI_COMMAND").as_deref() == Some("VERSION") {
        let v = if version.len() <= 32 { version } else { "1.1.0".into() };
        let out = serde_json::json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS });
        return Outcome { stdout: format!("{out}\n"), status: 0 };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e, &version),
    };
    let inv = match Invocation::from_env(&env) {
        Ok(i) => i,
        Err(e) => return fail(e, &conf.cni_version),
    };
    let r = match inv.command {
        Command::Add => add(&conf, &inv, stdin).map(Some),
        Command::Del => del(&conf, &inv, stdin).map(|()| None),
        Command::Check => check_cmd(&conf, &inv, stdin).map(|()| None),
        Command::Status => status(&conf, &inv, stdin).map(|()| None),
        Command::Gc => gc(&conf, &inv, stdin).map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    match r {
        Ok(Some(result)) => {
            let out = serde_json::to_string(&result.for_version(&conf.cni_version)).unwrap_or_default();
            Outcome { stdout: format!("{out}\n"), status: 0 }
        }
        Ok(None) => Outcome { stdout: String::new(), status: 0 },
        Err(e) => fail(e, &conf.cni_version),
    }
}

/// One request to the daemon, and its data (`()` for a command's message).
/// Unreachable: "try again later" (it may be restarting).
fn ask<T: DeserializeOwned>(socket: &Path, req: Request) -> Result<Option<T>, CniError> {
    let s = UnixStream::connect(socket).map_err(|e| unreachable(socket, &e))?;
    ask_on(s, socket, req)
}

/// The answer when the daemon cannot be reached: try again later.
fn unreachable(socket: &Path, e: &dyn std::fmt::Display) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        "the ucanal daemon is unreachable",
        format!("{}: {e} (is `ucanal run` up on this node? the config's socket names it)", socket.display()),
    )
}

/// Whether a failed connect means no daemon runs on the socket at all (no socket file,
/// or nobody listening on it), as opposed to one that is there but cannot answer.
fn daemon_down(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
}

fn ask_on<T: DeserializeOwned>(s: UnixStream, socket: &Path, req: Request) -> Result<Option<T>, CniError> {
    let unreachable = |e: &dyn std::fmt::Display| unreachable(socket, e);
    s.set_read_timeout(Some(ANSWER_WAIT)).map_err(|e| unreachable(&e))?;
    match Client::new(s, socket.display()).call::<T>(&req) {
        Ok(r) => Ok(r.data),
        Err(ClientError::Refused(e)) => {
            let c = if e.code == ErrorCode::NoFreeAddress { code::NO_ADDRESS } else { code::DAEMON_REFUSED };
            Err(CniError::new(c, "the ucanal daemon refused", e.message))
        }
        Err(e @ ClientError::BadReply(_)) => {
            Err(CniError::new(code::BAD_DAEMON_REPLY, "bad answer from the ucanal daemon", e.to_string()))
        }
        Err(e) => Err(unreachable(&e)),
    }
}

/// The attachment the daemon answers ADD and CHECK with.
fn pod_of(r: Option<CniPod>) -> Result<CniPod, CniError> {
    r.ok_or_else(|| CniError::new(code::BAD_DAEMON_REPLY, "bad answer from the ucanal daemon", "no attachment"))
}

fn add(conf: &NetConf, inv: &Invocation, stdin: &[u8]) -> Result<CniResult, CniError> {
    let netns = inv.netns.as_ref().expect("checked by Invocation::from_env");
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            format!("CNI_NETNS {}", netns.display()),
        ));
    }
    let mut delegated = None;
    let ip = match &conf.ipam {
        Some(plugin) => {
            let r = delegate::exec(plugin, "ADD", &inv.path, stdin)?.ok_or_else(|| {
                CniError::new(code::IPAM_FAILED, "IPAM plugin failed", format!("{plugin} printed no result"))
            })?;
            let ip = r.first_ipv4();
            delegated = Some(r);
            match ip {
                Some(ip) => Some(ip),
                None => {
                    undo_ipam(conf, inv, stdin);
                    return Err(CniError::new(
                        code::IPAM_FAILED,
                        "IPAM plugin failed",
                        format!("{plugin} returned no IPv4 address"),
                    ));
                }
            }
        }
        None => inv.args.ip,
    };
    let attach = CniAttach {
        network: conf.name.clone(),
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: netns.display().to_string(),
        name: pod_name(&inv.args, &inv.container_id),
        ip,
        mac: match &inv.args.mac {
            Some(m) => {
                Some(m.parse().map_err(|_| CniError::new(code::INVALID_ENV, "invalid CNI_ARGS", format!("MAC={m}")))?)
            }
            None => None,
        },
        labels: conf.labels.clone(),
    };
    let pod = match ask(&conf.socket, api::Command::CniAdd { attach }.into()).and_then(pod_of) {
        Ok(p) => p,
        Err(e) => {
            if delegated.is_some() {
                undo_ipam(conf, inv, stdin);
            }
            return Err(e);
        }
    };
    Ok(result_for(conf, &pod, delegated))
}

/// SPEC.md section 4: a failed ADD after a delegated ADD calls the delegate's DEL.
fn undo_ipam(conf: &NetConf, inv: &Invocation, stdin: &[u8]) {
    if let Some(p) = &conf.ipam
        && let Err(e) = delegate::exec(p, "DEL", &inv.path, stdin)
    {
        eprintln!("ucanal-cni: releasing the address through {p} failed: {e}");
    }
}

/// `namespace/name` from CNI_ARGS, else the container id.
pub fn pod_name(args: &CniArgs, container_id: &str) -> String {
    args.pod().unwrap_or_else(|| container_id.to_string())
}

/// The result: the pod's interface, its /32, the default route via the gateway and
/// the gateway's link-scope route; merged into `prevResult` when chained.
fn result_for(conf: &NetConf, pod: &CniPod, delegated: Option<CniResult>) -> CniResult {
    let mut r = conf.prev_result.clone().unwrap_or_default();
    let idx = r.interfaces.len();
    r.interfaces.push(Interface {
        name: pod.ifname.clone(),
        mac: Some(pod.mac.to_string()),
        mtu: Some(u32::from(pod.mtu)),
        sandbox: Some(pod.netns.clone()),
        ..Default::default()
    });
    let gw = pod.gateway.to_string();
    r.ips.push(IpConfig { address: format!("{}/32", pod.ip), gateway: Some(gw.clone()), interface: Some(idx) });
    r.routes.push(Route { dst: "0.0.0.0/0".into(), gw: Some(gw.clone()), ..Default::default() });
    r.routes.push(Route { dst: format!("{gw}/32"), scope: Some(SCOPE_LINK), ..Default::default() });
    let dns = delegated.map(|d| d.dns).filter(|d| !d.is_empty()).or_else(|| conf.dns.clone());
    if let Some(d) = dns {
        r.dns = d;
    }
    r
}

/// DEL is idempotent and best effort (SPEC.md, "DEL"): with no daemon on the node at
/// all it succeeds, as there is nothing it could detach now — the container's TAP is
/// in the container's namespace, which the runtime deletes next, and the daemon's record
/// of it (its address lease) is released when the daemon is back, by the runtime's GC.
/// A daemon that is there but fails or refuses still fails the DEL, for a retry.
fn del(conf: &NetConf, inv: &Invocation, stdin: &[u8]) -> Result<(), CniError> {
    let req = api::Command::CniDel { container_id: inv.container_id.clone(), ifname: inv.ifname.clone() };
    match UnixStream::connect(&conf.socket) {
        Ok(s) => {
            ask_on::<()>(s, &conf.socket, req.into())?;
        }
        Err(e) if daemon_down(&e) => eprintln!(
            "ucanal-cni: DEL {} {}: no ucanal daemon on {} ({e}); nothing to detach now: the interface goes with \
             the container's namespace, the address lease when the daemon is back (CNI GC)",
            inv.container_id,
            inv.ifname,
            conf.socket.display()
        ),
        Err(e) => return Err(unreachable(&conf.socket, &e)),
    }
    if let Some(p) = &conf.ipam {
        delegate::exec(p, "DEL", &inv.path, stdin)?;
    }
    Ok(())
}

fn check_cmd(conf: &NetConf, inv: &Invocation, stdin: &[u8]) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "CHECK needs prevResult (the ADD's result)",
        )
    })?;
    let netns = inv.netns.as_ref().expect("checked by Invocation::from_env");
    let req = Query::CniCheck { container_id: inv.container_id.clone(), ifname: inv.ifname.clone() };
    let pod = ask(&conf.socket, req.into()).and_then(pod_of)?;
    let mismatch = |d: check::Mismatch| {
        CniError::new(code::CHECK_MISMATCH, "the attachment is not as prevResult says", d.to_string())
    };
    check::against_prev(prev, &pod, &netns.display().to_string()).map_err(mismatch)?;
    let found = check::read_view(netns, &inv.ifname)
        .map_err(|e| CniError::new(code::CHECK_MISMATCH, "the attachment is not as prevResult says", e.to_string()))?;
    check::against_view(&found, &pod).map_err(mismatch)?;
    if let Some(p) = &conf.ipam {
        delegate::exec(p, "CHECK", &inv.path, stdin)?;
    }
    Ok(())
}

fn status(conf: &NetConf, inv: &Invocation, stdin: &[u8]) -> Result<(), CniError> {
    let not_available = |e: CniError| CniError::new(code::NOT_AVAILABLE, "the plugin is not available", e.to_string());
    let r: Option<CniStatus> = ask(&conf.socket, Query::CniStatus.into()).map_err(not_available)?;
    match &conf.ipam {
        Some(p) => delegate::exec(p, "STATUS", &inv.path, stdin).map(drop),
        None => {
            if r.is_none_or(|s| s.free == 0) {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    "the plugin is not available",
                    "the pod CIDR has no free address",
                ));
            }
            Ok(())
        }
    }
}

fn gc(conf: &NetConf, inv: &Invocation, stdin: &[u8]) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let r = ask::<()>(&conf.socket, api::Command::CniGc { network: conf.name.clone(), valid }.into());
    // Forward to the delegate even when the daemon failed, then report the first error.
    let d = match &conf.ipam {
        Some(p) => delegate::exec(p, "GC", &inv.path, stdin).map(drop),
        None => Ok(()),
    };
    r.map(drop).and(d)
}
