//! Cross-module tests against the simulated kernel, and their support code.

mod behaviour_tests;
mod cluster_tests;
mod contrib_tests;
mod fault_tests;
mod fuzz_tests;
mod guard_tests;
mod health_tests;
mod hook_tests;
mod prop_tests;
mod state_tests;
pub mod test_support;
