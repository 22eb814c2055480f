//! Console handoff planning (being written).
use crate::error::Result;
use crate::lifecycle::Ctx;
use crate::plan::{PlannedDevice, Step};

pub fn plan(
    _ctx: &Ctx,
    _vmid: u32,
    _devices: &[PlannedDevice],
    _w: &mut Vec<String>,
) -> Result<Vec<Step>> {
    Ok(Vec::new())
}
