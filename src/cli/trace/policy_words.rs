//! The trace's words for the policy stage (`Step::Policy`): the pod, Felix's chain a
//! Calico user would look at (`cali-tw-<if>` / `cali-fw-<if>`), and what decided — the
//! rule and its policy with Calico's order, the namespace profile, or the end of the tier.

use std::fmt;

use crate::core::policy::model::PolicyKind;
use crate::core::trace::{PolicyDir, PolicyInfo, PolicyVerdict};

impl fmt::Display for PolicyInfo {
    /// `networkpolicy x/allow-b (order 1000)`, as kubectl / calicoctl name the kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            PolicyKind::NetworkPolicy => "networkpolicy",
            PolicyKind::CalicoNetworkPolicy => "networkpolicy.projectcalico.org",
            PolicyKind::GlobalNetworkPolicy => "globalnetworkpolicy",
        };
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{}", self.name)?,
            None => write!(f, "{kind} {}", self.name)?,
        }
        match &self.order {
            Some(o) => write!(f, " (order {o})"),
            None => write!(f, " (no order: last)"),
        }
    }
}

/// One `policy` line of a trace.
pub(super) fn policy_step(
    f: &mut fmt::Formatter<'_>,
    dir: PolicyDir,
    pod: &(String, String),
    verdict: PolicyVerdict,
    policy: Option<&PolicyInfo>,
    rule: Option<usize>,
    chain: &str,
) -> fmt::Result {
    let dir = match dir {
        PolicyDir::Ingress => "ingress",
        PolicyDir::Egress => "egress ",
    };
    write!(f, "policy      {dir} {}/{} [{chain}]: ", pod.0, pod.1)?;
    let by = |f: &mut fmt::Formatter<'_>| match (policy, rule) {
        (Some(p), Some(r)) => write!(f, "rule {r} of {p}"),
        _ => write!(f, "a rule"),
    };
    let profile = format!("the namespace profile kns.{} allows", pod.0);
    match verdict {
        PolicyVerdict::Allow => {
            write!(f, "allow by ")?;
            by(f)
        }
        PolicyVerdict::Deny => {
            write!(f, "deny by ")?;
            by(f)
        }
        PolicyVerdict::Log => {
            write!(f, "log by ")?;
            by(f)?;
            write!(f, " (and on to the next rule)")
        }
        PolicyVerdict::Pass => {
            write!(f, "pass by ")?;
            by(f)?;
            write!(f, ": end of tier, {profile}")
        }
        PolicyVerdict::NoPolicy => write!(f, "no policy selects the pod: {profile}"),
        PolicyVerdict::EndOfTier => write!(f, "drop: Drop if no policies passed packet (end of tier)"),
        PolicyVerdict::FromHost => write!(f, "from the pod's own node: always allowed (kubelet probes)"),
        PolicyVerdict::Ambiguous => {
            write!(f, "drop: a TCP connection not seen from its start, which the policy allows one way only")
        }
        PolicyVerdict::Uncomputable => write!(f, "drop: the pod's policy is not known yet (not in sync)"),
    }
}

#[cfg(test)]
mod tests {
    use crate::core::trace::{PolicyDir, PolicyInfo, PolicyVerdict, Step};

    use super::PolicyKind;

    #[test]
    fn policy_steps_name_the_rule_and_the_chain() {
        let info = PolicyInfo {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some("x".into()),
            name: "allow-b".into(),
            order: Some("1000".into()),
        };
        let step = |verdict, with_rule: bool| Step::Policy {
            dir: PolicyDir::Ingress,
            pod: ("x".into(), "a".into()),
            verdict,
            policy: with_rule.then(|| info.clone()),
            rule: with_rule.then_some(0),
            chain: "cali-tw-cali0123456789a".into(),
        };
        assert_eq!(
            step(PolicyVerdict::Allow, true).to_string(),
            "policy      ingress x/a [cali-tw-cali0123456789a]: allow by rule 0 of networkpolicy x/allow-b (order 1000)"
        );
        assert_eq!(
            step(PolicyVerdict::EndOfTier, false).to_string(),
            "policy      ingress x/a [cali-tw-cali0123456789a]: drop: Drop if no policies passed packet (end of tier)"
        );
        assert_eq!(
            step(PolicyVerdict::NoPolicy, false).to_string(),
            "policy      ingress x/a [cali-tw-cali0123456789a]: no policy selects the pod: the namespace profile kns.x allows"
        );
        let gnp =
            PolicyInfo { kind: PolicyKind::GlobalNetworkPolicy, namespace: None, name: "deny-db".into(), order: None };
        assert_eq!(gnp.to_string(), "globalnetworkpolicy deny-db (no order: last)");
    }
}
