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

fn main() {
    std::process::exit(cli::main());
}
