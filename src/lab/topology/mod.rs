//! Lab topology files (`netns-scripts/lab.sh up --topology FILE.yaml`), in
//! containerlab's shape where it fits: `name`, `topology.nodes` (each `kind: ucanal |
//! kernel`, its address on the lab's LAN, pod CIDR or `leased`, config overrides, pods
//! with namespace, labels, containerPorts and an address or none), `topology.links`
//! (LANs: the lab's own first, then any extra ones), `etcd`, and the Kubernetes
//! manifests to apply. docs/lab.md describes the fields.
//!
//! Owns reading and checking a file — every error names the field with its line and
//! column, before the lab creates anything — and what the lab scripts are given: the
//! plan (bash assignments of lib.sh's arrays, [`plan`]) or the Graphviz graph ([`dot`]).

mod check;
pub mod dot;
mod error;
mod model;
pub mod plan;
mod read;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use error::{LoadError, TopologyError};
pub use model::{ContainerPort, Kind, Lan, Loaded, Node, Pod, Topology};

use crate::api::kube;
use crate::core::nat::service::ServiceSpec;

/// Reads and checks a topology from its text; `dir` resolves the manifests' paths.
pub fn load_str(text: &str, dir: &Path) -> Result<Loaded, TopologyError> {
    let root = yaml::parse(text).map_err(|e| TopologyError::at(e.mark, "(syntax)", e.problem))?;
    let topology = Topology::from_yaml(&root)?;
    check::whole(&topology)?;
    let mut store = crate::control::kube::Store::default();
    let mut manifests = Vec::new();
    for m in &topology.manifests {
        let path = dir.join(&m.value);
        let text =
            std::fs::read_to_string(&path).map_err(|e| m.error(format!("cannot read {}: {e}", path.display())))?;
        let objs = kube::parse_manifest(&text).map_err(|e| m.error(format!("{}: {e}", m.value)))?;
        store.apply(objs, false);
        manifests.push(path);
    }
    let services: Vec<ServiceSpec> = store.services().iter().flat_map(|s| store.specs(s)).collect();
    let loaded = Loaded { topology, manifests, services };
    plan::check_configs(&loaded)?;
    Ok(loaded)
}

pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    load_str(&text, dir).map_err(|source| LoadError::Invalid { path: path.into(), source })
}

/// `ucanal topology`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Check a topology file: exit 2 naming the field (line:column) when it is wrong.
    Check { file: PathBuf },
    /// Print the lab's plan as bash assignments (what lab.sh sources).
    Plan { file: PathBuf },
    /// Print the topology as a Graphviz graph (nodes, pods, LANs, VXLAN peers).
    Dot { file: PathBuf },
}

pub fn run(a: &Args) -> ExitCode {
    let (Cmd::Check { file } | Cmd::Plan { file } | Cmd::Dot { file }) = &a.cmd;
    let loaded = match load(file) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ucanal: {e}");
            return ExitCode::from(2);
        }
    };
    match &a.cmd {
        Cmd::Check { .. } => {
            let t = &loaded.topology;
            let pods: usize = t.nodes.iter().map(|n| n.pods.len()).sum();
            println!(
                "{}: lab {} with {} node(s), {} pod(s), {} LAN(s), {} service(s){}: ok",
                file.display(),
                t.name,
                t.nodes.len(),
                pods,
                t.lans.len(),
                loaded.services.len(),
                if t.etcd { ", etcd" } else { "" }
            );
        }
        Cmd::Plan { .. } => print!("{}", plan::bash(&loaded)),
        Cmd::Dot { .. } => print!("{}", dot::graph(&loaded.topology)),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests;
