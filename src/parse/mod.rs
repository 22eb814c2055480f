//! Text → data: the Proxmox files and pt-hook.toml.

pub mod config;
pub mod libvirt;
pub mod pve;
