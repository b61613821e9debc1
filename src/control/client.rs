//! The CLI's side of the runtime API.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::api::{Request, Response};

fn connect(socket: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(socket).map_err(|e| {
        format!("cannot reach ucanal at {}: {e} (is `ucanal run` up? set --socket or UCANAL_SOCKET)", socket.display())
    })
}

/// Sends one request and calls `each` with every response line until the last one
/// (a non-stream response, an error, or a stream's `done`). `each` returns false to stop.
pub fn call(
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
    mut each: impl FnMut(Response) -> bool,
) -> Result<(), String> {
    let mut s = connect(socket)?;
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    let streaming = matches!(req, Request::TraceLive { .. } | Request::Capture { .. });
    for l in BufReader::new(s).lines() {
        let l = l.map_err(|e| format!("reading from {}: {e}", socket.display()))?;
        let r: Response = serde_json::from_str(&l).map_err(|e| format!("bad response from ucanal: {e}"))?;
        let last = !streaming || r.done || !r.ok;
        if !r.ok {
            return Err(r.error.unwrap_or_else(|| "unknown error".into()));
        }
        if !each(r) || last {
            return Ok(());
        }
    }
    Ok(())
}

/// One request, one response.
pub fn request(socket: &Path, req: &Request) -> Result<Response, String> {
    let mut out = None;
    call(socket, req, Some(Duration::from_secs(60)), |r| {
        out = Some(r);
        false
    })?;
    out.ok_or_else(|| "ucanal closed the connection without answering".into())
}

/// `<pod name>:<port>` (the name may be `namespace/name`).
pub fn parse_pod_port(s: &str) -> Result<(&str, u16), String> {
    let (name, port) = s.rsplit_once(':').ok_or_else(|| format!("--pod {s}: want <pod name>:<port>"))?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| format!("--pod {s}: '{port}' is not a port"))?;
    if name.is_empty() {
        return Err(format!("--pod {s}: the pod name is empty"));
    }
    Ok((name, port))
}

/// The endpoint `<pod name>:<port>` names: the pod's address, looked up in the daemon's pods.
pub fn pod_endpoint(socket: &Path, s: &str) -> Result<std::net::SocketAddrV4, String> {
    let (name, port) = parse_pod_port(s)?;
    let data = request(socket, &Request::Show { what: super::api::Show::Pods })?.data.unwrap_or_default();
    let rows: Vec<super::show::PodRow> =
        serde_json::from_value(data).map_err(|e| format!("unexpected listing from ucanal: {e}"))?;
    let pod = rows.iter().find(|r| r.name == name).ok_or_else(|| {
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        format!("no pod {name} on this node (it has {names:?})")
    })?;
    Ok(std::net::SocketAddrV4::new(pod.ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_port() {
        assert_eq!(parse_pod_port("default/web:2368"), Ok(("default/web", 2368)));
        assert_eq!(parse_pod_port("ghost-ep1:80"), Ok(("ghost-ep1", 80)));
        assert!(parse_pod_port("default/web").is_err());
        assert!(parse_pod_port("web:0").is_err());
        assert!(parse_pod_port(":80").is_err());
    }
}
