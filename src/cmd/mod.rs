//! Front-ends: arguments → engine → output. The only layer that prints.

pub mod doctor;
pub mod fleet;
pub mod install;
pub mod libvirt;
pub mod plan;
pub mod quirks;
pub mod reset;
pub mod status;
