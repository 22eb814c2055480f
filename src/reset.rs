//! The reset ladder (being written).
use crate::lifecycle::Ctx;
use crate::pci::Bdf;
use crate::state::VmState;

#[derive(Default)]
pub struct Outcome {
    pub failed: Vec<(Bdf, String)>,
}

pub fn post_stop_reset(ctx: &Ctx, st: &VmState) -> Outcome {
    let mut o = Outcome::default();
    for d in &st.devices {
        if let Err(e) = crate::device::config_healthy(&*ctx.host, &d.original.bdf) {
            o.failed.push((d.original.bdf, e));
        }
    }
    o
}

pub fn command(_ctx: &Ctx, _bdfs: &[Bdf], _method: Option<&str>, _json: bool) -> crate::error::Result<()> {
    Err(crate::error::Error::Failed("reset: not built yet".into()))
}
