//! The network-namespace lab's side in the binary: topology files, read and checked
//! for `netns-scripts/lab.sh` (which builds the lab itself).

pub mod topology;
