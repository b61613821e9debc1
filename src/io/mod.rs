//! The shell: opens TAPs and sockets, moves bytes in batches, owns threads, and
//! configures the kernel through rtnetlink. It makes no packet decision of its own:
//! every frame goes to [`crate::core::Dataplane`] and the returned action is executed.

pub mod clock;
pub mod filter;
pub mod netlink;
pub mod observe;
pub mod stats;
pub mod sys;
pub mod tap;
pub mod underlay;
pub mod worker;
pub mod zerocopy;
