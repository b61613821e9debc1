//! Delegation to an IPAM plugin (SPEC.md section 4): the plugin named by the config's
//! `ipam.type` is looked up in `CNI_PATH` and run with the environment this plugin got
//! (only `CNI_COMMAND` changes, for the DEL that undoes a failed ADD), the same config
//! on stdin, and its stderr passed through. Its error result is returned unchanged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::spec::{CniError, CniResult, code};

/// The plugin's executable: the first `dir/name` in `CNI_PATH` that is a file.
pub fn find(name: &str, path: &[PathBuf]) -> Option<PathBuf> {
    path.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Runs the delegate with `command`; its result on success (`None` when it printed nothing).
pub fn exec(name: &str, command: &str, path: &[PathBuf], stdin: &[u8]) -> Result<Option<CniResult>, CniError> {
    let failed = |d: String| CniError::new(code::IPAM_FAILED, "IPAM plugin failed", d);
    let bin = find(name, path).ok_or_else(|| {
        let dirs: Vec<String> = path.iter().map(|p| p.display().to_string()).collect();
        failed(format!("IPAM plugin {name} not found in CNI_PATH ({})", dirs.join(":")))
    })?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| failed(format!("running {}: {e}", bin.display())))?;
    if let Some(mut i) = child.stdin.take() {
        // A plugin that exits without reading its stdin is judged by its status below.
        let _ = i.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| failed(format!("waiting for {}: {e}", bin.display())))?;
    parse_output(&bin, out.status.success(), &out.stdout).map_err(|e| {
        if e.code == code::IPAM_FAILED { e } else { CniError { details: format!("{name}: {}", e.details), ..e } }
    })
}

/// Reads the delegate's stdout: a result after success, an error result after failure.
pub fn parse_output(bin: &Path, success: bool, stdout: &[u8]) -> Result<Option<CniResult>, CniError> {
    let failed = |d: String| CniError::new(code::IPAM_FAILED, "IPAM plugin failed", d);
    let text = String::from_utf8_lossy(stdout);
    if success {
        if text.trim().is_empty() {
            return Ok(None);
        }
        return serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| failed(format!("{} printed an unreadable result ({e}): {}", bin.display(), text.trim())));
    }
    match serde_json::from_str::<CniError>(&text) {
        Ok(e) => Err(e),
        Err(_) => Err(failed(format!("{} failed: {}", bin.display(), text.trim()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegate_output() {
        let bin = Path::new("/usr/lib/cni/host-local");
        let ok = br#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.100/24","gateway":"10.244.1.1"}],"dns":{}}"#;
        let r = parse_output(bin, true, ok).unwrap().unwrap();
        assert_eq!(r.first_ipv4(), Some("10.244.1.100".parse().unwrap()));
        assert_eq!(parse_output(bin, true, b"").unwrap(), None);
        let e =
            parse_output(bin, false, br#"{"code":999,"msg":"no IP addresses available in range set"}"#).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (999, "no IP addresses available in range set"));
        assert_eq!(parse_output(bin, false, b"panic: boom").unwrap_err().code, code::IPAM_FAILED);
        assert_eq!(parse_output(bin, true, b"{not json").unwrap_err().code, code::IPAM_FAILED);
        assert!(find("host-local-does-not-exist", &[PathBuf::from("/usr/lib/cni")]).is_none());
    }
}
