//! Support code for mitigator's integration tests (tests/tests/*): one
//! module per tool, e.g. the packet builder and the BPF_PROG_TEST_RUN harness.

pub mod packet;
pub mod testrun;
