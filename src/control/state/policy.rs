//! Network policy on this node: the policy objects of an `apply` or of the etcd watch
//! go to the policy book, the flows a new table denies are cut at once (and again by
//! the maintenance thread, for flows admitted while the table was being swapped), and
//! `show policy` lists the chains.

use super::Daemon;
use crate::api::PolicyChain;
use crate::api::kube::Object;
use crate::core::policy::recheck;
use crate::io::clock;

impl Daemon {
    /// Re-checks established flows against the policy just published; cuts the denied.
    pub(super) fn recheck_flows(&mut self) {
        let dp = self.plane.dp().clone();
        let block = self.plane.api_block();
        if let Some(r) = recheck::recheck(&dp, clock::now(), self.kube.policy.checked, block) {
            self.kube.policy.checked = r.generation;
            if r.cut > 0 {
                tracing::info!(checked = r.checked, cut = r.cut, generation = r.generation, "policy change: flows cut");
            }
        }
    }

    /// Puts (or deletes) the policy objects among `objs`: they go to the engine, and the
    /// next publish carries the new table.
    pub(super) fn policy_objects(&mut self, objs: &[Object], delete: bool) -> bool {
        let any = objs.iter().any(|o| matches!(o, Object::Policy { .. }));
        if any {
            self.kube.policy.apply(objs, delete);
        }
        any
    }

    /// `show policy`: each local pod's chains with their counters.
    pub fn policy_chains(&mut self) -> Vec<PolicyChain> {
        self.kube.policy.chains()
    }

    /// The per-rule counters (metrics).
    pub fn policy_rule_counters(&self) -> Vec<(String, String, &'static str, usize, u64, u64)> {
        self.kube.policy.rule_counters()
    }
}
