//! Calico's `projectcalico.org/v3` `NetworkPolicy` and `GlobalNetworkPolicy`, as
//! `calicoctl` takes them, with Calico's validation (ports only with a protocol that has
//! them) and defaulting (`types` from the rules present). What ucanal does not enforce —
//! tiers other than `default`, ICMP type matches, HTTP matches, service accounts,
//! services, host-endpoint options — is refused by name.

use super::cursor::{
    At, Fault, FieldError, Res, check_dns_label, check_dns_subdomain, cidr, field, list_field, required,
};
use crate::core::policy::model::{CalicoPolicy, CalicoPort, CalicoRule, EntityRule, IpProto, RuleAction};
use crate::core::policy::selector::{self, Selector};

fn selector_field(a: At) -> Res<Selector> {
    let s = a.str()?;
    selector::parse(s).map_err(|e| a.invalid(format!("selector '{s}' {e}")))
}

fn proto(a: At) -> Res<IpProto> {
    let text = match (a.v.as_str(), a.v.as_u64()) {
        (Some(s), _) => s.to_string(),
        (None, Some(n)) => n.to_string(),
        _ => return Err(a.err(Fault::Type("a protocol name or number"))),
    };
    IpProto::parse(&text)
        .ok_or_else(|| a.invalid(format!("'{text}' is not a protocol (TCP, UDP, ICMP, SCTP, UDPLite or 1-255)")))
}

fn port(a: At) -> Res<CalicoPort> {
    if let Some(n) = a.v.as_u64() {
        return match u16::try_from(n) {
            Ok(n) => Ok(CalicoPort::Range(n, n)),
            Err(_) => Err(a.invalid(format!("{n} is not a port (0-65535)"))),
        };
    }
    let s = a.str()?;
    let num = |t: &str| t.parse::<u16>().map_err(|_| a.invalid(format!("'{t}' is not a port (0-65535)")));
    if let Some((lo, hi)) = s.split_once(':') {
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo > hi {
            return Err(a.invalid(format!("range {lo}:{hi} is backwards")));
        }
        return Ok(CalicoPort::Range(lo, hi));
    }
    if s.bytes().all(|c| c.is_ascii_digit()) {
        let n = num(s)?;
        return Ok(CalicoPort::Range(n, n));
    }
    super::cursor::check_port_name(a, s)?;
    Ok(CalicoPort::Name(s.to_string()))
}

fn entity(e: At, protocol: Option<IpProto>) -> Res<EntityRule> {
    e.keys(
        &["nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts"],
        &[
            ("serviceAccounts", "service-account matches are not enforced"),
            ("services", "service matches are not enforced"),
        ],
    )?;
    let out = EntityRule {
        nets: list_field(e, "nets", cidr)?,
        not_nets: list_field(e, "notNets", cidr)?,
        selector: field(e, "selector", selector_field)?,
        not_selector: field(e, "notSelector", selector_field)?,
        namespace_selector: field(e, "namespaceSelector", selector_field)?,
        ports: list_field(e, "ports", port)?,
        not_ports: list_field(e, "notPorts", port)?,
    };
    if (!out.ports.is_empty() || !out.not_ports.is_empty()) && !protocol.is_some_and(IpProto::has_ports) {
        let key = if out.ports.is_empty() { "notPorts" } else { "ports" };
        return Err(FieldError {
            field: format!("{}.{key}", e.path()),
            fault: Fault::Invalid("needs the rule's protocol to be TCP, UDP, SCTP or UDPLite".into()),
        });
    }
    Ok(out)
}

fn rule(r: At) -> Res<CalicoRule> {
    r.keys(
        &["action", "protocol", "notProtocol", "ipVersion", "source", "destination", "metadata"],
        &[
            ("icmp", "ICMP type/code matches are not enforced"),
            ("notICMP", "ICMP type/code matches are not enforced"),
            ("http", "HTTP matches need an application-layer proxy"),
        ],
    )?;
    let action = required(r, "action", |a| {
        let s = a.str()?;
        Ok(match s {
            "Allow" => RuleAction::Allow,
            "Deny" => RuleAction::Deny,
            "Log" => RuleAction::Log,
            "Pass" => RuleAction::Pass,
            _ => return Err(a.invalid(format!("'{s}' is not an action (Allow, Deny, Log, Pass)"))),
        })
    })?;
    field(r, "ipVersion", |a| match a.v.as_u64() {
        Some(4) => Ok(()),
        Some(6) => Err(a.err(Fault::Unsupported("IPv6 (ucanal is IPv4-only)".into()))),
        _ => Err(a.invalid("must be 4 or 6")),
    })?;
    let protocol = field(r, "protocol", proto)?;
    let not_protocol = field(r, "notProtocol", proto)?;
    let source = field(r, "source", |e| entity(e, protocol))?.unwrap_or_default();
    let destination = field(r, "destination", |e| entity(e, protocol))?.unwrap_or_default();
    Ok(CalicoRule { action, protocol, not_protocol, source, destination })
}

pub(super) fn policy(root: At, global: bool) -> Res<CalicoPolicy> {
    root.keys(&["apiVersion", "kind", "metadata", "spec"], &[])?;
    let (name, namespace) = required(root, "metadata", |m| {
        let name = required(m, "name", |a| {
            let s = a.str()?;
            check_dns_subdomain(a, s)?;
            Ok(s.to_string())
        })?;
        let ns = field(m, "namespace", |a| {
            let s = a.str()?;
            check_dns_label(a, s)?;
            Ok(s.to_string())
        })?;
        if global && ns.is_some() {
            return Err(FieldError {
                field: "metadata.namespace".into(),
                fault: Fault::Invalid("a GlobalNetworkPolicy has no namespace".into()),
            });
        }
        Ok((name, if global { None } else { Some(ns.unwrap_or_else(|| "default".into())) }))
    })?;
    let spec_keys: &[&str] = if global {
        &["order", "tier", "selector", "namespaceSelector", "types", "ingress", "egress", "performanceHints"]
    } else {
        &["order", "tier", "selector", "types", "ingress", "egress", "performanceHints"]
    };
    required(root, "spec", |spec| {
        spec.keys(
            spec_keys,
            &[
                ("serviceAccountSelector", "service-account selection is not enforced"),
                ("doNotTrack", "host endpoints only (ucanal has no host endpoints)"),
                ("preDNAT", "host endpoints only (ucanal has no host endpoints)"),
                ("applyOnForward", "host endpoints only (ucanal has no host endpoints)"),
            ],
        )?;
        field(spec, "tier", |a| match a.str()? {
            "default" => Ok(()),
            t => Err(a.err(Fault::Unsupported(format!("tier '{t}' (only the default tier)")))),
        })?;
        let order = field(spec, "order", |a| {
            a.v.as_f64().filter(|f| f.is_finite()).ok_or_else(|| a.err(Fault::Type("a number")))
        })?;
        let selector = field(spec, "selector", selector_field)?.unwrap_or(Selector::All);
        let namespace_selector = field(spec, "namespaceSelector", selector_field)?;
        let ingress = list_field(spec, "ingress", rule)?;
        let egress = list_field(spec, "egress", rule)?;
        let types = list_field(spec, "types", |a| match a.str()? {
            "Ingress" => Ok(true),
            "Egress" => Ok(false),
            s => Err(a.invalid(format!("'{s}' is not a policy type (Ingress, Egress)"))),
        })?;
        // Calico's defaulting: Ingress unless there are only egress rules; Egress when
        // there are egress rules.
        let (ingress_type, egress_type) = if types.is_empty() {
            (!ingress.is_empty() || egress.is_empty(), !egress.is_empty())
        } else {
            (types.iter().any(|t| *t), types.iter().any(|t| !*t))
        };
        Ok(CalicoPolicy {
            namespace: namespace.clone(),
            name: name.clone(),
            order,
            selector,
            namespace_selector,
            ingress_type,
            egress_type,
            ingress,
            egress,
        })
    })
}
