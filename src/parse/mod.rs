//! Text → data: the Proxmox files and pt-hook.toml.

pub mod cluster;
pub mod config;
pub mod libvirt;
pub mod pve;
pub mod trust;
