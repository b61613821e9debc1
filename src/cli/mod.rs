//! The `ucanal` client: how it reaches a node's daemon and renders what it answers.

pub mod kubectl;
pub mod target;
pub mod trace;
