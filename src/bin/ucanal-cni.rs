//! `ucanal-cni`: the CNI plugin binary. The runtime sets the `CNI_*` environment and
//! writes the network configuration on stdin; the result or error goes to stdout.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(1 << 20).read_to_end(&mut stdin) {
        let err = ucanal::cni::spec::CniError::new(
            ucanal::cni::spec::code::IO_FAILURE,
            "reading the network configuration from stdin",
            e.to_string(),
        );
        println!("{}", err.to_json("1.0.0"));
        return ExitCode::FAILURE;
    }
    let out = ucanal::cni::plugin::run(|k| std::env::var(k).ok(), &stdin);
    print!("{}", out.stdout);
    ExitCode::from(out.status)
}
