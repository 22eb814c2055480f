//! What every phase and command runs with: the host, the config, the logger, dry-run and the
//! node name.

use std::sync::Arc;

use crate::engine::exec::Exec;
use crate::host::Host;
use crate::log::Logger;
use crate::parse::config::Config;

pub struct Ctx<'a> {
    pub host: Arc<dyn Host>,
    pub cfg: &'a Config,
    pub log: &'a Logger,
    pub dry_run: bool,
    pub node: String,
    /// The hook phases' early walk of /proc for the guard (see `guard::PreWalk`).
    pub prewalk: crate::engine::guard::PreWalk,
}

impl<'a> Ctx<'a> {
    pub fn exec(&self) -> Exec<'a> {
        Exec::new(
            Arc::clone(&self.host),
            &self.cfg.timeouts,
            self.dry_run,
            self.log,
        )
    }
    pub fn h(&self) -> &dyn Host {
        &*self.host
    }
}
