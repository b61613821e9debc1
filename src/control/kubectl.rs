//! The client side of `ucanal apply -f` / `delete -f` / `get`: reads manifests, sends
//! them to the daemon, prints what is stored as kubectl does.

use std::path::Path;

use super::api::Request;
use super::client::{self, Target};
use super::kube::{self, Object};

/// `-f FILE` of `apply` and `delete`.
#[derive(Debug, clap::Args)]
pub struct Manifest {
    /// A YAML or JSON manifest (`-`: stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: std::path::PathBuf,
}

/// `get WHAT [-o json|yaml]`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// services or endpoints.
    pub what: String,
    /// json or yaml (default: a kubectl-style table).
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

/// `show peers` as a table, from the daemon's JSON.
pub fn peers(data: &serde_json::Value) -> Result<String, String> {
    let rows: Vec<super::cluster::member::PeerRow> =
        serde_json::from_value(data["peers"].clone()).map_err(|e| format!("unexpected answer: {e}"))?;
    Ok(super::cluster::member::peers_text(&rows))
}

/// Reads and parses a manifest file (`-` is stdin).
pub fn read(file: &Path) -> Result<Vec<Object>, String> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?
    };
    kube::parse_manifest(&text).map_err(|e| format!("{}: {e}", file.display()))
}

pub fn apply(target: &Target, file: &Path, delete: bool) -> Result<String, String> {
    let objects = read(file)?;
    client::request(target, &Request::Apply { objects, delete }).map(|r| r.message.unwrap_or_default())
}

/// `get services|endpoints [-o wide|json|yaml]`.
pub fn get(target: &Target, what: &str, output: Option<&str>) -> Result<String, String> {
    let what = match what {
        "services" | "service" | "svc" => "services",
        "endpoints" | "ep" | "endpointslices" => "endpoints",
        other => return Err(format!("get: '{other}' is not services or endpoints")),
    };
    let data = client::request(target, &Request::Get { what: what.into() })?.data.unwrap_or_default();
    match output {
        Some("json") => return serde_json::to_string_pretty(&data).map_err(|e| e.to_string()),
        Some("yaml") => return serde_yaml_ng::to_string(&data).map_err(|e| e.to_string()),
        _ => {}
    }
    let items: Vec<Object> = serde_json::from_value(data["items"].clone()).map_err(|e| e.to_string())?;
    Ok(if what == "services" { services_table(&items) } else { endpoints_table(&items) })
}

pub fn services_table(items: &[Object]) -> String {
    let mut s = format!(
        "{:<12} {:<30} {:<10} {:<15} {:<12} {}\n",
        "NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"
    );
    for o in items {
        if let Object::Service { metadata, spec } = o {
            let ports: Vec<String> = spec
                .ports
                .iter()
                .map(|p| match p.node_port {
                    Some(np) => format!("{}:{np}/{}", p.port, p.protocol),
                    None => format!("{}/{}", p.port, p.protocol),
                })
                .collect();
            let ip = spec.cluster_ip.clone().unwrap_or_default();
            s += &format!(
                "{:<12} {:<30} {:<10} {:<15} {:<12} {}\n",
                metadata.namespace,
                metadata.name,
                spec.kind,
                ip,
                "<none>",
                ports.join(",")
            );
        }
    }
    s
}

pub fn endpoints_table(items: &[Object]) -> String {
    let mut s = format!("{:<12} {:<30} {}\n", "NAMESPACE", "NAME", "ENDPOINTS");
    for o in items {
        let (m, eps): (_, Vec<String>) = match o {
            Object::Endpoints { metadata, subsets } => (
                metadata,
                subsets
                    .iter()
                    .flat_map(|s| {
                        s.ports
                            .iter()
                            .flat_map(move |p| s.addresses.iter().map(move |a| format!("{}:{}", a.ip, p.port)))
                    })
                    .collect(),
            ),
            Object::EndpointSlice { metadata, endpoints, ports } => (
                metadata,
                ports
                    .iter()
                    .flat_map(|p| {
                        endpoints.iter().flat_map(|e| e.addresses.iter()).map(move |a| format!("{a}:{}", p.port))
                    })
                    .collect(),
            ),
            Object::Service { .. } => continue,
        };
        let shown = if eps.is_empty() { "<none>".to_string() } else { eps.join(",") };
        s += &format!("{:<12} {:<30} {}\n", m.namespace, m.name, shown);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_read_like_kubectl() {
        let objs = kube::parse_manifest(include_str!("../../netns-scripts/manifests/ghost.yaml")).unwrap();
        let t = services_table(&objs);
        assert!(
            t.lines().nth(1).unwrap().split_whitespace().eq([
                "default",
                "ghost",
                "NodePort",
                "10.250.0.40",
                "<none>",
                "2368:31266/TCP"
            ]),
            "{t}"
        );
        let e = endpoints_table(&objs);
        assert!(e.contains("10.244.0.74:2368,10.244.1.5:2368"), "{e}");
    }
}
