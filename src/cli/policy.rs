//! The client side of policy: `get namespaces|pods|networkpolicies|globalnetworkpolicies`
//! as kubectl's tables, and `show policy` as `iptables -vnL` lists Felix's chains.

use crate::api::kube::Object;
use crate::api::{PolicyChain, PolicyRuleRow};

/// `get` of policy objects: `NAMESPACE NAME KIND LABELS` (kubectl's `--show-labels`).
pub fn objects_table(items: &[Object]) -> String {
    let mut s = format!("{:<16} {:<30} {:<20} {}\n", "NAMESPACE", "NAME", "KIND", "LABELS");
    for o in items {
        let Object::Policy { metadata, manifest } = o else { continue };
        let kind = manifest.get("kind").and_then(|k| k.as_str()).unwrap_or("?");
        let labels: Vec<String> = manifest
            .pointer("/metadata/labels")
            .and_then(|l| l.as_object())
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
            .unwrap_or_default();
        let ns = if metadata.namespace.is_empty() { "<none>" } else { &metadata.namespace };
        let labels = if labels.is_empty() { "<none>".to_string() } else { labels.join(",") };
        s += &format!("{ns:<16} {:<30} {kind:<20} {labels}\n", metadata.name);
    }
    s
}

/// One rule as `iptables -vnL` shows it: packets, bytes, target, and what it is.
fn rule_line(r: &PolicyRuleRow) -> String {
    let target = match r.action.as_str() {
        "Allow" => "ACCEPT",
        "Deny" => "DROP",
        "Pass" => "RETURN",
        "Log" => "LOG",
        other => other,
    };
    let order = r.order.as_ref().map(|o| format!(" order {o}")).unwrap_or_default();
    format!(
        "{:>8} {:>8} {:<7} /* {} {}{order} {} rule {} */\n",
        r.packets, r.bytes, target, r.kind, r.policy, r.dir, r.rule
    )
}

/// `show policy [--pod NS/NAME]`: per local pod, its two chains in walk order.
pub fn chains_text(chains: &[PolicyChain]) -> String {
    let mut s = String::new();
    for c in chains {
        for (dir, chain, isolated) in
            [("ingress", &c.ingress_chain, c.ingress_isolated), ("egress", &c.egress_chain, c.egress_isolated)]
        {
            s += &format!("Chain {chain} ({}/{} {dir}, {})\n", c.namespace, c.name, c.ip);
            s += &format!("{:>8} {:>8} {:<7} {}\n", "pkts", "bytes", "target", "rule");
            if !isolated {
                s +=
                    &format!("{:>8} {:>8} {:<7} /* no policy selects the pod: profile allows */\n", "-", "-", "ACCEPT");
                continue;
            }
            for r in c.rules.iter().filter(|r| r.dir == dir) {
                s += &rule_line(r);
            }
            s += &format!("{:>8} {:>8} {:<7} /* Drop if no policies passed packet */\n", "-", "-", "DROP");
        }
        s.push('\n');
    }
    if s.is_empty() {
        s = "no local pod\n".into();
    }
    s
}
