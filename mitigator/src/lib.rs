//! mitigator's userspace: the daemon, its control protocol and the CLI.
//!
//! Only `datapath` talks to aya; everything else works on plain types and is
//! unit-tested without a kernel.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod detect;
pub mod escalation;
pub mod metrics;
pub mod prefix;
pub mod protocol;
pub mod rules;
pub mod state;
pub mod stats;
pub mod sysctl;
