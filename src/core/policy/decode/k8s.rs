//! Kubernetes `Namespace`, `Pod` and `networking.k8s.io/v1` `NetworkPolicy`, with the
//! API server's validation and defaulting (`policyTypes`, protocol TCP, the namespace
//! name label).

use super::cursor::{
    At, Fault, Res, check_dns_label, check_dns_subdomain, check_port_name, cidr, field, labels, list_field,
    port_number, required,
};
use crate::core::policy::model::{
    ContainerPort, K8sPeer, K8sPort, K8sRule, LabelSelector, Labels, Namespace, NetworkPolicy, Pod, PortRef, Protocol,
    Requirement, SelectorOp,
};

/// `metadata.name`, `metadata.namespace` (when namespaced: default `default`), labels.
fn metadata(root: At, namespaced: bool) -> Res<(String, String, Labels)> {
    required(root, "metadata", |m| {
        m.obj()?;
        let name = required(m, "name", |a| {
            let s = a.str()?;
            if namespaced {
                check_dns_subdomain(a, s)?
            } else {
                check_dns_label(a, s)?
            }
            Ok(s.to_string())
        })?;
        let ns = if namespaced {
            field(m, "namespace", |a| {
                let s = a.str()?;
                check_dns_label(a, s)?;
                Ok(s.to_string())
            })?
            .unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        let l = field(m, "labels", labels)?.unwrap_or_default();
        Ok((name, ns, l))
    })
}

pub(super) fn namespace(root: At) -> Res<Namespace> {
    root.keys(&["apiVersion", "kind", "metadata", "spec", "status"], &[])?;
    let (name, _, l) = metadata(root, false)?;
    // The API server sets the name label whatever the manifest says.
    Ok(Namespace::new(&name, l))
}

fn protocol(a: At) -> Res<Protocol> {
    let s = a.str()?;
    Protocol::parse(s).ok_or_else(|| a.invalid(format!("'{s}' is not a protocol (TCP, UDP, SCTP)")))
}

pub(super) fn pod(root: At) -> Res<Pod> {
    let (name, namespace, l) = metadata(root, true)?;
    let (node, host_network, ports) = field(root, "spec", |spec| {
        let node = field(spec, "nodeName", |a| a.str().map(str::to_string))?;
        let host_network = field(spec, "hostNetwork", |a| a.bool())?.unwrap_or(false);
        let mut ports = Vec::new();
        for containers in ["containers", "initContainers"] {
            for c in list_field(spec, containers, |c| {
                list_field(c, "ports", |p| {
                    let port = required(p, "containerPort", port_number)?;
                    let protocol = field(p, "protocol", protocol)?.unwrap_or(Protocol::Tcp);
                    let name = field(p, "name", |a| {
                        let s = a.str()?;
                        check_port_name(a, s)?;
                        Ok(s.to_string())
                    })?;
                    Ok(ContainerPort { name, port, protocol })
                })
            })? {
                ports.extend(c);
            }
        }
        Ok((node, host_network, ports))
    })?
    .unwrap_or((None, false, Vec::new()));
    let ip = field(root, "status", |st| {
        field(st, "podIP", |a| {
            let s = a.str()?;
            if s.is_empty() {
                return Ok(None);
            }
            if s.contains(':') {
                return Err(a.err(Fault::Unsupported(format!("'{s}' is IPv6 (ucanal is IPv4-only)"))));
            }
            s.parse().map(Some).map_err(|_| a.invalid(format!("'{s}' is not an IPv4 address")))
        })
    })?
    .flatten()
    .flatten();
    // A host-network pod has the node's address and no endpoint of its own: no policy
    // selects its traffic (as Calico, which has no workload endpoint for it).
    let ip = if host_network { None } else { ip };
    Ok(Pod { namespace, name, labels: l, ip, node, ports })
}

pub(super) fn label_selector(at: At) -> Res<LabelSelector> {
    at.keys(&["matchLabels", "matchExpressions"], &[])?;
    let match_labels = field(at, "matchLabels", labels)?.unwrap_or_default();
    let match_expressions = list_field(at, "matchExpressions", |r| {
        r.keys(&["key", "operator", "values"], &[])?;
        let key = required(r, "key", |a| a.str().map(str::to_string))?;
        if labels_key_invalid(&key) {
            return Err(r.invalid(format!("key '{key}' is not a label key")));
        }
        let op = required(r, "operator", |a| {
            let s = a.str()?;
            Ok(match s {
                "In" => SelectorOp::In,
                "NotIn" => SelectorOp::NotIn,
                "Exists" => SelectorOp::Exists,
                "DoesNotExist" => SelectorOp::DoesNotExist,
                _ => return Err(a.invalid(format!("'{s}' is not an operator (In, NotIn, Exists, DoesNotExist)"))),
            })
        })?;
        let values = list_field(r, "values", |a| a.str().map(str::to_string))?;
        let wants_values = matches!(op, SelectorOp::In | SelectorOp::NotIn);
        if wants_values == values.is_empty() {
            let why = if wants_values { "must not be empty for In and NotIn" } else { "must be empty for Exists" };
            return Err(super::cursor::FieldError {
                field: format!("{}.values", r.path()),
                fault: Fault::Invalid(why.into()),
            });
        }
        Ok(Requirement { key, op, values })
    })?;
    Ok(LabelSelector { match_labels, match_expressions })
}

fn labels_key_invalid(k: &str) -> bool {
    let v = serde_json::json!({ k: "" });
    labels(super::cursor::root(&v)).is_err()
}

fn peer(p: At) -> Res<K8sPeer> {
    p.keys(&["podSelector", "namespaceSelector", "ipBlock"], &[])?;
    let pods = field(p, "podSelector", label_selector)?;
    let namespaces = field(p, "namespaceSelector", label_selector)?;
    let block = field(p, "ipBlock", |b| {
        b.keys(&["cidr", "except"], &[])?;
        let c = required(b, "cidr", cidr)?;
        let except = list_field(b, "except", |e| {
            let x = cidr(e)?;
            if !c.contains_net(&x) || x.prefix_len() == c.prefix_len() {
                return Err(e.invalid(format!("{x} is not a strict subset of cidr {c}")));
            }
            Ok(x)
        })?;
        Ok(K8sPeer::IpBlock { cidr: c, except })
    })?;
    match (block, pods.is_some() || namespaces.is_some()) {
        (Some(_), true) => Err(p.invalid("ipBlock may not be combined with podSelector or namespaceSelector")),
        (Some(b), false) => Ok(b),
        (None, true) => Ok(K8sPeer::Pods { pods, namespaces }),
        (None, false) => Err(p.invalid("must specify podSelector, namespaceSelector or ipBlock")),
    }
}

fn port(p: At) -> Res<K8sPort> {
    p.keys(&["protocol", "port", "endPort"], &[])?;
    let protocol = field(p, "protocol", protocol)?.unwrap_or(Protocol::Tcp);
    // intstr: a number, or a string that is a port name ("80" as a string is neither).
    let port = field(p, "port", |a| match a.v.as_str() {
        Some(s) => {
            check_port_name(a, s)?;
            Ok(PortRef::Name(s.to_string()))
        }
        None => port_number(a).map(|n| PortRef::Number { port: n, end: n }),
    })?;
    let end = field(p, "endPort", port_number)?;
    let port = match (port, end) {
        (Some(PortRef::Number { port, .. }), Some(end)) if end >= port => Some(PortRef::Number { port, end }),
        (Some(PortRef::Number { port, .. }), Some(end)) => {
            return Err(super::cursor::FieldError {
                field: format!("{}.endPort", p.path()),
                fault: Fault::Invalid(format!("{end} is below port {port}")),
            });
        }
        (_, Some(_)) => {
            return Err(super::cursor::FieldError {
                field: format!("{}.endPort", p.path()),
                fault: Fault::Invalid("needs a numeric port".into()),
            });
        }
        (p, None) => p,
    };
    Ok(K8sPort { protocol, port })
}

fn rule(r: At, peers_key: &str) -> Res<K8sRule> {
    r.keys(&[peers_key, "ports"], &[])?;
    Ok(K8sRule { peers: list_field(r, peers_key, peer)?, ports: list_field(r, "ports", port)? })
}

pub(super) fn network_policy(root: At) -> Res<NetworkPolicy> {
    root.keys(&["apiVersion", "kind", "metadata", "spec", "status"], &[])?;
    let (name, namespace, _) = metadata(root, true)?;
    required(root, "spec", |spec| {
        spec.keys(&["podSelector", "policyTypes", "ingress", "egress"], &[])?;
        let pod_selector = required(spec, "podSelector", label_selector)?;
        let ingress = list_field(spec, "ingress", |r| rule(r, "from"))?;
        let egress = list_field(spec, "egress", |r| rule(r, "to"))?;
        let types = list_field(spec, "policyTypes", |a| {
            let s = a.str()?;
            match s {
                "Ingress" | "Egress" => Ok(s == "Ingress"),
                _ => Err(a.invalid(format!("'{s}' is not a policy type (Ingress, Egress)"))),
            }
        })?;
        // The API server's defaulting: no policyTypes = Ingress, plus Egress when the
        // policy has egress rules.
        let (ingress_type, egress_type) = if types.is_empty() {
            (true, !egress.is_empty())
        } else {
            (types.iter().any(|t| *t), types.iter().any(|t| !*t))
        };
        Ok(NetworkPolicy { namespace, name, pod_selector, ingress_type, egress_type, ingress, egress })
    })
}
