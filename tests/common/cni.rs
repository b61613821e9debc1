//! The CNI plugin run exactly as a runtime runs it (the `CNI_*` environment, the
//! network config on stdin), and the namespaces the tests give it as containers.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::text;

pub fn plugin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ucanal-cni"))
}

/// One invocation: (exit status, stdout as JSON or Null when empty).
pub fn invoke(env: &[(&str, &str)], stdin: &Value) -> (i32, Value) {
    let mut c = Command::new(plugin_bin())
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ucanal-cni");
    c.stdin.take().unwrap().write_all(stdin.to_string().as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let s = text(&out.stdout);
    let v = if s.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {s:?}"))
    };
    (out.status.code().unwrap_or(-1), v)
}

/// A network namespace standing in for a container's, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Netns {
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        Netns(name)
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    pub fn ip(&self, args: &[&str]) -> String {
        text(&Command::new("ip").args(["-n", &self.0]).args(args).output().unwrap().stdout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
