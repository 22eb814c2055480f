//! pt-hook: dependable GPU and PCIe passthrough for Proxmox VE.
//!
//! Exit codes: 0 ok; 1 the operation failed (pre-start: the VM start is aborted); 2 usage or
//! configuration error; 3 a device is left in a state only a host reboot fixes.

mod cli;
mod cmd;
mod engine;
mod error;
mod host;
mod log;
mod parse;
mod pci;
mod sysfs;
#[cfg(test)]
mod tests;

// Transitional: the old flat paths, so this commit only moves files.
use cmd::{doctor, install};
use engine::{
    console, exec, guard, handoff, identity, libvirt, lifecycle, plan, quirks, reset, resolve,
    state, userhooks,
};
use parse::{config, pve};
use sysfs::{device, pciids};
#[cfg(test)]
use tests::test_support;

fn main() {
    std::process::exit(cli::main());
}
