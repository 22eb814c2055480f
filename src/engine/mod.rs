//! The engine: resolve a VM's devices, plan the steps, execute them with a journal, restore.

pub mod console;
pub mod ctx;
pub mod devices;
pub mod exec;
pub mod fleet;
pub mod guard;
pub mod handoff;
pub mod health;
pub mod identity;
pub mod lifecycle;
pub mod metrics;
pub mod phase;
pub mod plan;
pub mod quirks;
pub mod reset;
pub mod resolve;
pub mod state;
pub mod userhooks;
