//! The harness shared by the tests on the simulated kernel (behaviour_tests, hook_tests,
//! fault_tests): a [`SimHost`] with Proxmox VM configs, a config with short timeouts, a
//! silent logger, and the few views of the host the tests compare. Test modules add their
//! own `impl T` blocks for what only they need.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::ctx::Ctx;
use crate::host::sim::{ResetBehaviour, SimDevice, SimDriver, SimHost, Snapshot};
use crate::host::Host;
use crate::log::Logger;
use crate::parse::config::{Config, Timeouts};

/// The VM configs of the behaviour tests (gpu_host devices).
pub const GPU_HOST_VMS: &[(u32, &str)] = &[
    (
        100,
        "machine: q35\nhostpci0: 02:00.0\nhostpci1: 04:00.0,pcie=1\n",
    ),
    (101, "machine: q35\nhostpci0: 03:00.0;04:00.0\n"),
    (102, "machine: q35\nhostpci0: 01:00,x-vga=1\n"),
    (
        103,
        "machine: q35\nhostpci0: 03:00.0,driver=keep\nhostpci1: 05:00.0\n",
    ),
];

/// Timeouts short enough for quick tests, long enough that a clean step never times out on
/// a loaded 2-core machine.
/// Where `blackwell_host` puts its card (behind root port 00:1c.2, IOMMU group 30).
pub const BLACKWELL: &str = "0000:06:00.0";

/// gpu_host plus an RTX 5090-like card on nvidia (the nvidia-blackwell profile removes FLR
/// and pins power): FLR leaves its config space at 0xffffffff; the slot reset works.
pub fn blackwell_host() -> SimHost {
    let sim = SimHost::gpu_host();
    sim.add_driver(SimDriver::new("nvidia").id(0x10de, 0x2b85));
    sim.add_device(
        SimDevice::new(BLACKWELL, 0x10de, 0x2b85, 0x030000)
            .parent("0000:00:1c.2")
            .group(30)
            .reset_methods(&["flr", "bus"])
            .reset_behaviour("flr", ResetBehaviour::Wedge)
            .link("32.0 GT/s PCIe", 16)
            .d3cold(Some(true))
            .driver("nvidia"),
    );
    sim
}

pub fn timeouts() -> Timeouts {
    Timeouts {
        step: Duration::from_millis(1500),
        driver_bind: Duration::from_secs(3),
        flr: Duration::from_millis(1500),
        bus_reset: Duration::from_secs(3),
        rescan: Duration::from_secs(3),
        module: Duration::from_secs(3),
        unit: Duration::from_secs(3),
        lock: Duration::from_millis(300),
        phase: Duration::from_secs(20),
        hook: Duration::from_secs(5),
        container: Duration::from_secs(5),
    }
}

pub struct T {
    pub sim: Arc<SimHost>,
    pub cfg: Config,
    pub log: Logger,
}

impl T {
    /// gpu_host with [`GPU_HOST_VMS`] and [`timeouts`].
    pub fn new() -> T {
        T::with(SimHost::gpu_host())
    }

    /// `sim` with [`GPU_HOST_VMS`] and [`timeouts`].
    pub fn with(sim: SimHost) -> T {
        T::build(sim, GPU_HOST_VMS, timeouts())
    }

    /// `sim` with /etc/pve/qemu-server/<vmid>.conf = body for each of `vms`.
    pub fn build(sim: SimHost, vms: &[(u32, &str)], timeouts: Timeouts) -> T {
        let sim = Arc::new(sim);
        let dir = sim.root_dir().join("etc/pve/qemu-server");
        std::fs::create_dir_all(&dir).unwrap();
        for (vm, body) in vms {
            std::fs::write(dir.join(format!("{vm}.conf")), body).unwrap();
        }
        T {
            sim,
            cfg: Config {
                timeouts,
                ..Config::default()
            },
            log: Logger::new(-3, false), // silent: tests assert on results
        }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        self.ctx_dry(false)
    }

    pub fn ctx_dry(&self, dry_run: bool) -> Ctx<'_> {
        Ctx {
            host: Arc::clone(&self.sim) as Arc<dyn Host>,
            cfg: &self.cfg,
            log: &self.log,
            dry_run,
            node: "pve1".into(),
            prewalk: crate::engine::guard::PreWalk::none(),
        }
    }

    /// The host's devices and modules, minus vfio-pci staying loaded after a cycle (that is
    /// intended: other VMs may use it).
    pub fn devices(&self) -> Snapshot {
        let mut s = self.sim.snapshot();
        s.modules.remove("vfio_pci");
        s.modules.remove("vfio-pci");
        s
    }

    /// Whether a Proxmox VM's state file exists.
    pub fn has_state(&self, vm: u32) -> bool {
        self.sim.exists(&format!("run/pt-hook/vm-{vm}.json"))
    }
}
