//! The CNI plugin's parsers: any bytes as the network configuration on stdin, and any
//! text as `CNI_ARGS` and the other `CNI_*` variables, give a value or a CNI error with a
//! well-known code, never a panic. The first byte picks the command. Seeds: `fuzz/seeds/cni`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucanal::cni::spec::{CniArgs, Invocation, NetConf};

const COMMANDS: &[&str] = &["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "", "add"];

fuzz_target!(|data: &[u8]| {
    if let Err(e) = NetConf::parse(data) {
        assert!(matches!(e.code, 1..=7), "{e}");
    }
    let _ = NetConf::version_of(data);
    let Some((&first, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let _ = CniArgs::parse(&text);
    // The same text cut into the variables at newlines.
    let mut parts = text.splitn(4, '\n');
    let (id, netns, ifname, args) = (parts.next(), parts.next(), parts.next(), parts.next());
    let cmd = COMMANDS[usize::from(first) % COMMANDS.len()];
    let get = |k: &str| match k {
        "CNI_COMMAND" => Some(cmd.to_string()),
        "CNI_CONTAINERID" => id.map(str::to_string),
        "CNI_NETNS" => netns.map(str::to_string),
        "CNI_IFNAME" => ifname.map(str::to_string),
        "CNI_ARGS" => args.map(str::to_string),
        "CNI_PATH" => Some("/opt/cni/bin:/usr/lib/cni".into()),
        _ => None,
    };
    if let Ok(i) = Invocation::from_env(get) {
        assert!(!i.command.is_attachment() || !i.container_id.is_empty());
    }
});
