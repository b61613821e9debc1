//! The client side of `ucanal apply -f` / `delete -f` / `get`: reads manifests, sends
//! them to the daemon, prints what is stored as kubectl does.

use std::path::Path;

use super::CliError;
use super::show::json_text;
use super::target::{ANSWER_WAIT, Target};
use crate::api::kube::{self, Object, ObjectList};
use crate::api::{ObjectKind, Query};

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

/// Reads and parses a manifest file (`-` is stdin).
pub fn read(file: &Path) -> Result<Vec<Object>, CliError> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|source| CliError::File { what: "stdin".into(), source })?
    } else {
        std::fs::read_to_string(file).map_err(|source| CliError::File { what: file.display().to_string(), source })?
    };
    kube::parse_manifest(&text).map_err(|source| CliError::Manifest { path: file.to_path_buf(), source })
}

/// The most bytes of objects one `apply` request carries: below the daemon's request
/// limit (1 MiB), with room for the request around them.
const PART_BYTES: usize = 768 << 10;

/// Splits a manifest's objects into JSON arrays of at most [`PART_BYTES`] each (every
/// object serialised once), never between two objects of the same service (its
/// Service and Endpoints are checked together).
pub fn parts(objects: &[Object]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let (mut part, mut last) = (b"[".to_vec(), String::new());
    let mut one = Vec::with_capacity(512);
    for o in objects {
        one.clear();
        if serde_json::to_writer(&mut one, o).is_err() {
            continue;
        }
        let svc = o.service();
        if part.len() > 1 && part.len() + one.len() + 1 > PART_BYTES && svc != last {
            part.push(b']');
            out.push(std::mem::replace(&mut part, b"[".to_vec()));
        }
        if part.len() > 1 {
            part.push(b',');
        }
        part.extend_from_slice(&one);
        last = svc;
    }
    if part.len() > 1 || out.is_empty() {
        part.push(b']');
        out.push(part);
    }
    out
}

/// The `apply` request line of one part (`more`: parts follow on the connection).
fn apply_line(objects: &[u8], delete: bool, more: bool) -> Vec<u8> {
    let mut line = Vec::with_capacity(objects.len() + 64);
    line.extend_from_slice(br#"{"op":"apply","delete":"#);
    line.extend_from_slice(if delete { b"true" } else { b"false" });
    if more {
        line.extend_from_slice(br#","more":true"#);
    }
    line.extend_from_slice(br#","objects":"#);
    line.extend_from_slice(objects);
    line.extend_from_slice(b"}\n");
    line
}

/// `apply -f` / `delete -f`. A manifest too big for one request (10,000 services) goes
/// in parts, in order, on one connection; the daemon holds them and applies the whole
/// manifest at the last one, whole or not at all (through etcd: checked whole, then
/// written in transactions).
pub fn apply(target: &Target, file: &Path, delete: bool) -> Result<String, CliError> {
    let all = parts(&read(file)?);
    let k = all.len();
    let mut c = target.client(Some(ANSWER_WAIT))?;
    let mut last = None;
    for (i, objects) in all.iter().enumerate() {
        match c.call_line::<serde::de::IgnoredAny>(&apply_line(objects, delete, i + 1 < k)) {
            Ok(r) => last = r.message,
            Err(e) if k == 1 => return Err(e.into()),
            Err(source) => return Err(CliError::Part { part: i + 1, of: k, source }),
        }
    }
    Ok(last.unwrap_or_default())
}

/// `get services|endpoints [-o wide|json|yaml]`.
pub fn get(target: &Target, what: &str, output: Option<&str>) -> Result<String, CliError> {
    let kind = match what {
        "services" | "service" | "svc" => ObjectKind::Services,
        "endpoints" | "ep" | "endpointslices" => ObjectKind::Endpoints,
        "namespaces" | "namespace" | "ns" => ObjectKind::Namespaces,
        "pods" | "pod" | "po" => ObjectKind::Pods,
        "networkpolicies" | "networkpolicy" | "netpol" => ObjectKind::NetworkPolicies,
        "networkpolicies.projectcalico.org" | "globalnetworkpolicies" | "globalnetworkpolicy" | "gnp" => {
            ObjectKind::CalicoPolicies
        }
        other => {
            return Err(CliError::Usage(format!(
                "get: '{other}' is not services, endpoints, namespaces, pods, networkpolicies or \
                 globalnetworkpolicies"
            )));
        }
    };
    let mut list: ObjectList = target.client(Some(ANSWER_WAIT))?.query(Query::Get { what: kind })?;
    if kind.policy_dirs().is_some() && output.is_some() {
        // Policy objects print as their manifests, as kubectl and calicoctl do.
        let items: Vec<serde_json::Value> = list
            .items
            .drain(..)
            .filter_map(|o| match o {
                Object::Policy { manifest, .. } => Some(manifest),
                _ => None,
            })
            .collect();
        let v = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        return match output {
            Some("json") => json_text(&v),
            _ => serde_yaml_ng::to_string(&v).map_err(CliError::Yaml),
        };
    }
    match output {
        Some("json") => return json_text(&list),
        Some("yaml") => {
            let v = serde_json::to_value(&list).map_err(CliError::Json)?;
            return serde_yaml_ng::to_string(&v).map_err(CliError::Yaml);
        }
        _ => {}
    }
    Ok(match kind {
        ObjectKind::Services => services_table(&list.items),
        ObjectKind::Endpoints => endpoints_table(&list.items),
        _ => super::policy::objects_table(&list.items),
    })
}

pub fn services_table(items: &[Object]) -> String {
    let mut s = format!(
        "{:<12} {:<30} {:<10} {:<15} {:<12} {}\n",
        "NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"
    );
    for o in items {
        if let Object::Service { metadata, spec, status } = o {
            let ports: Vec<String> = spec
                .ports
                .iter()
                .map(|p| match p.node_port {
                    Some(np) => format!("{}:{np}/{}", p.port, p.protocol),
                    None => format!("{}/{}", p.port, p.protocol),
                })
                .collect();
            let ip = spec.cluster_ip.clone().unwrap_or_default();
            let lb = status.ingress().filter_map(|i| i.ip.clone());
            let external: Vec<String> = lb.chain(spec.external_ips.iter().cloned()).collect();
            let external = if external.is_empty() { "<none>".to_string() } else { external.join(",") };
            s += &format!(
                "{:<12} {:<30} {:<10} {:<15} {:<12} {}\n",
                metadata.namespace,
                metadata.name,
                spec.kind,
                ip,
                external,
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
            Object::Service { .. } | Object::Policy { .. } => continue,
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
    fn big_manifests_go_in_parts_that_keep_a_service_together() {
        let mut objs = Vec::new();
        for i in 0..5000 {
            let m = format!(
                r#"{{"kind":"List","items":[{{"kind":"Service","metadata":{{"name":"svc-{i}","namespace":"bench"}},"spec":{{"clusterIP":"10.250.{}.{}","ports":[{{"port":80}}]}}}},{{"kind":"Endpoints","metadata":{{"name":"svc-{i}","namespace":"bench"}},"subsets":[{{"addresses":[{{"ip":"10.244.1.5"}}],"ports":[{{"port":2368}}]}}]}}]}}"#,
                i >> 8,
                i & 255
            );
            objs.extend(kube::parse_manifest(&m).unwrap());
        }
        let p = parts(&objs);
        assert!(p.len() > 1, "{} parts", p.len());
        let back: Vec<Vec<Object>> = p.iter().map(|j| serde_json::from_slice(j).unwrap()).collect();
        assert_eq!(back.concat(), objs, "every object once, in order");
        for (i, part) in p.iter().enumerate() {
            // At most one service's objects over the mark, well below the 1 MiB request limit.
            assert!(part.len() <= PART_BYTES + 1024);
            let line = apply_line(part, false, i + 1 < p.len());
            assert!(line.len() < (1 << 20) && line.ends_with(b"}\n"));
            let r = crate::api::codec::decode_request(&line[..line.len() - 1]);
            assert!(
                matches!(r, Ok(crate::api::Request::Command(crate::api::Command::Apply { more, .. })) if more == (i + 1 < p.len())),
                "{r:?}"
            );
        }
        for w in back.windows(2) {
            assert_ne!(w[0].last().unwrap().service(), w[1][0].service(), "a service split across parts");
        }
        assert_eq!(parts(&[]), vec![b"[]".to_vec()], "an empty manifest is one (empty) request");
    }

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
