//! Errors and the exit codes they map to.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line or input: exit 2, nothing touched.
    #[error("{0}")]
    Usage(String),
    /// Bad configuration (VM config, pci.cfg, pt-hook.toml): exit 2, nothing touched.
    #[error("{0}")]
    Config(String),
    /// A host file operation failed. Names the device, the file and the errno.
    #[error("{what}: {action} {file}: {}", errno_text(.err))]
    Host {
        what: String,
        action: String,
        file: String,
        err: io::Error,
    },
    /// The operation failed (pre-start: the start is aborted).
    #[error("{0}")]
    Failed(String),
    /// A device is left in a state only a host reboot (or power cycle) fixes.
    #[error("{0}")]
    NeedsReboot(String),
    /// Tests: pre-start "died" at a step boundary (no rollback, only the state file is left).
    #[cfg(test)]
    #[error("simulated crash")]
    SimulatedCrash,
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config(_) => 2,
            Error::Host { .. } | Error::Failed(_) => 1,
            Error::NeedsReboot(_) => 3,
            #[cfg(test)]
            Error::SimulatedCrash => 1,
        }
    }

    /// A host write that did not return before its deadline (the kernel may still act on it).
    pub fn timed_out(&self) -> bool {
        matches!(self, Error::Host { err, .. } if err.raw_os_error() == Some(libc::ETIMEDOUT))
    }

    pub fn host(what: impl ToString, action: &str, file: String, err: io::Error) -> Error {
        Error::Host {
            what: what.to_string(),
            action: action.to_string(),
            file,
            err,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// "Device or resource busy (os error 16)" → "Device or resource busy (EBUSY)".
pub fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let name = nix::errno::Errno::from_raw(code);
            let desc = nix::errno::Errno::desc(name);
            format!("{desc} ({name:?})")
        }
        None => e.to_string(),
    }
}
