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
