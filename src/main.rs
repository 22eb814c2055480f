//! pt-hook: dependable GPU and PCIe passthrough for Proxmox VE.
//!
//! Exit codes: 0 ok; 1 the operation failed (pre-start: the VM start is aborted); 2 usage or
//! configuration error; 3 a device is left in a state only a host reboot fixes.

#[cfg(test)]
mod behaviour_tests;
mod cli;
mod config;
mod console;
#[cfg(test)]
mod contrib_tests;
mod device;
mod doctor;
mod error;
mod exec;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod fuzz_tests;
mod guard;
#[cfg(test)]
mod guard_tests;
mod handoff;
#[cfg(test)]
mod hook_tests;
mod host;
mod identity;
mod install;
mod libvirt;
mod lifecycle;
mod log;
mod pci;
mod pciids;
mod plan;
#[cfg(test)]
mod prop_tests;
mod pve;
mod quirks;
mod reset;
mod resolve;
mod state;
#[cfg(test)]
mod test_support;
mod userhooks;

fn main() {
    std::process::exit(cli::main());
}
