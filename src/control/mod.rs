//! The control plane: the daemon of one node. It turns the config file, API requests
//! and etcd watches into table snapshots for the dataplane, made of books that each
//! own their state (see [`state`]): the node's kernel side ([`node`]), the running
//! dataplane ([`plane`]), [`pods`], [`services`], the addresses of CNI attachments
//! ([`ipam`]), Kubernetes objects ([`kube`]), flannel membership
//! ([`cluster`], over the [`etcd`] client), and what survives a restart ([`persist`],
//! [`handover`]). [`daemon`] runs it: start, the API server, stop. [`inspect`] answers
//! what the API shows, [`metrics`] what Prometheus scrapes, [`check`] what `ucanal check`
//! finds before a `run`. It depends on the API
//! contract ([`crate::api`]), never on the CLI.

pub mod check;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod error;
pub mod etcd;
pub mod handover;
pub mod health;
pub mod inspect;
pub mod ipam;
pub mod kube;
pub mod metrics;
pub mod node;
pub mod persist;
pub mod plane;
pub mod pods;
pub mod policy;
pub mod services;
pub mod state;
