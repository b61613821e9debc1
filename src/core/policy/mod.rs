//! NetworkPolicy: the Calico half of Canal.
//!
//! This room owns the policy model and everything between the objects and the verdict
//! of a new flow:
//! - [`model`]: Kubernetes `Namespace`, `Pod`, `NetworkPolicy` (networking.k8s.io/v1) and
//!   Calico's `NetworkPolicy` / `GlobalNetworkPolicy` (projectcalico.org/v3);
//! - [`decode`]: those objects from their manifests, every fault naming its field;
//! - [`selector`]: Calico's selector language (Kubernetes selectors are converted to it);
//! - [`ir`]: one rule form for both APIs (a Kubernetes policy is order 1000, all Allow);
//! - [`engine`]: the world fed by the control plane, kept incrementally, and this node's
//!   compiled [`PolicyTable`] (per local pod and direction: the ordered rules and, per
//!   peer address, its class of rules; the IP sets of [`sets`]);
//! - [`table`]: the per-flow walk, Felix's chain order; [`stage`]: both directions of a flow;
//! - [`recheck`]: flows admitted under an older policy re-checked, the denied ones cut;
//! - [`log`]: the records of `Log` rules, for the shell to write.
//!
//! Where it is enforced (the dataplane's policy stage, `dataplane/policy.rs`): once per new
//! flow, on its final tuple (after DNAT, before SNAT), the sender's egress on the
//! sender's node and the receiver's ingress on the receiver's node; traffic from the
//! pod's own node always passes; the verdict is the flow's conntrack entry, so replies
//! and related ICMP errors pass and an established packet does no policy work.

pub mod compile;
pub mod decode;
pub mod engine;
/// The fuzz harness of the decoders (fuzz/, tests): only with the `testkit` feature.
#[cfg(any(test, feature = "testkit"))]
pub mod fuzzing;
pub mod ir;
pub mod log;
pub mod model;
pub mod recheck;
pub mod selector;
pub mod sets;
pub mod stage;
pub mod table;

pub use engine::PolicyEngine;
pub use ir::PolicyInfo;
pub use table::{Direction, PolicyTable};

/// What one step of the policy stage decided, as a trace shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A rule allowed.
    Allow,
    /// A rule denied.
    Deny,
    /// A rule passed: the tier ends, the namespace's profile allows.
    Pass,
    /// A `Log` rule matched; the walk goes on.
    Log,
    /// No policy selects the pod this way: the namespace's profile allows.
    NoPolicy,
    /// "Drop if no policies passed packet".
    EndOfTier,
    /// From the pod's own node (kubelet's probes): always allowed.
    FromHost,
    /// A TCP packet of a connection not seen from its start, allowed one way only.
    Ambiguous,
    /// The engine is not in sync: not computable, dropped.
    Uncomputable,
}

impl Verdict {
    pub fn allows(self) -> bool {
        matches!(self, Verdict::Allow | Verdict::Pass | Verdict::NoPolicy | Verdict::FromHost | Verdict::Log)
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
