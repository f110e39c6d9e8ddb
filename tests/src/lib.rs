//! Support code for mitigator's integration tests (tests/tests/*): one
//! module per tool, e.g. the packet builder and the BPF_PROG_TEST_RUN harness.

pub mod daemon;
pub mod lab;
pub mod packet;
pub mod testrun;
pub mod traffic;
