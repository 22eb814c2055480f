//! Quirk profiles (being written).
use crate::config::Config;
use crate::error::Result;
use crate::host::Host;
use crate::plan::PlannedDevice;

pub fn apply_profiles(
    _host: &dyn Host,
    _cfg: &Config,
    _devices: &mut [PlannedDevice],
    _warnings: &mut Vec<String>,
) -> Result<()> {
    Ok(())
}
