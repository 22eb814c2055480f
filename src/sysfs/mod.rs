//! Device facts read through `Host`.

pub mod device;
pub mod pciids;
