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
    // One malloc arena for every thread: glibc gives each new thread that allocates an arena
    // of its own (a 64-128 MiB reservation, an mprotect, a CPU count, fresh pages to fault
    // in), and a hook phase starts a dozen short-lived threads that allocate little.
    // SAFETY: mallopt only sets a malloc tunable; no allocation is in flight on another
    // thread (there is none yet).
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    std::process::exit(cli::main());
}
