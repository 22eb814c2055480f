//! Devices + config → an ordered list of steps. Pure: the same inputs give the same steps.
//! Every step has an inverse; the journal of begun steps, undone in reverse, is both the
//! rollback of a failed pre-start and the post-stop restore.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pci::Bdf;
use crate::sysfs::device::DeviceInfo;

pub const VFIO: &str = "vfio-pci";
pub const VFIO_MODULE: &str = "vfio_pci";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    /// Load modules in order. `unload_on_undo`: false for vfio-pci, which other VMs may be
    /// using.
    LoadModules {
        modules: Vec<String>,
        unload_on_undo: bool,
    },
    /// Unload modules in the given order (modprobe -r); undo loads them in reverse.
    UnloadModules {
        modules: Vec<String>,
    },
    SetResetMethod {
        bdf: Bdf,
        from: String,
        to: String,
    },
    /// d3cold_allowed or power/control.
    SetAttr {
        bdf: Bdf,
        file: String,
        from: String,
        to: String,
    },
    /// power/control "on" once the function is on vfio-pci, whose probe allowed runtime PM
    /// whatever was pinned before it. No inverse: vfio-pci's unbind forbids runtime PM again,
    /// and a pin before the unbind (`SetAttr`) gives the host its own value back.
    HoldD0 {
        bdf: Bdf,
    },
    Unbind {
        bdf: Bdf,
        driver: String,
    },
    Bind {
        bdf: Bdf,
        driver: String,
    },
    SetOverride {
        bdf: Bdf,
        from: Option<String>,
        to: Option<String>,
    },
    /// drivers_probe, then wait for `driver` to be bound.
    Probe {
        bdf: Bdf,
        driver: String,
    },
    StopUnit {
        unit: String,
    },
    StartUnit {
        unit: String,
    },
    /// Write 0 (bind=false) or 1 to a vtconsole's bind file, verified by reading it back.
    Vtcon {
        vtcon: String,
        bind: bool,
    },
    /// Unbind a firmware framebuffer platform device; it never comes back (the kernel drops it
    /// once a real driver claims the GPU), so it has no inverse.
    UnbindPlatform {
        driver: String,
        device: String,
    },
    /// Shut an LXC container down (`pct shutdown`, then `pct stop`) whose processes hold a
    /// device the VM takes (`release_containers`); undo starts it again.
    StopContainer {
        ctid: u32,
    },
    StartContainer {
        ctid: u32,
    },
    /// Wait until no process holds the functions any more (after the units or containers
    /// that held them were stopped); no inverse.
    AwaitFree {
        bdfs: Vec<Bdf>,
    },
}

impl Step {
    pub fn inverse(&self) -> Option<Step> {
        Some(match self.clone() {
            Step::LoadModules {
                mut modules,
                unload_on_undo,
            } => {
                if !unload_on_undo {
                    return None;
                }
                modules.reverse();
                Step::UnloadModules { modules }
            }
            Step::UnloadModules { mut modules } => {
                modules.reverse();
                Step::LoadModules {
                    modules,
                    unload_on_undo: true,
                }
            }
            Step::SetResetMethod { bdf, from, to } => Step::SetResetMethod {
                bdf,
                from: to,
                to: from,
            },
            Step::SetAttr {
                bdf,
                file,
                from,
                to,
            } => Step::SetAttr {
                bdf,
                file,
                from: to,
                to: from,
            },
            Step::Unbind { bdf, driver } => Step::Bind { bdf, driver },
            Step::Bind { bdf, driver } => Step::Unbind { bdf, driver },
            Step::SetOverride { bdf, from, to } => Step::SetOverride {
                bdf,
                from: to,
                to: from,
            },
            Step::Probe { bdf, driver } => Step::Unbind { bdf, driver },
            Step::StopUnit { unit } => Step::StartUnit { unit },
            Step::StartUnit { unit } => Step::StopUnit { unit },
            Step::Vtcon { vtcon, bind } => Step::Vtcon { vtcon, bind: !bind },
            Step::UnbindPlatform { .. } | Step::AwaitFree { .. } | Step::HoldD0 { .. } => {
                return None
            }
            Step::StopContainer { ctid } => Step::StartContainer { ctid },
            Step::StartContainer { ctid } => Step::StopContainer { ctid },
        })
    }

    /// The device a step acts on, if any.
    pub fn bdf(&self) -> Option<Bdf> {
        match self {
            Step::SetResetMethod { bdf, .. }
            | Step::SetAttr { bdf, .. }
            | Step::HoldD0 { bdf }
            | Step::Unbind { bdf, .. }
            | Step::Bind { bdf, .. }
            | Step::SetOverride { bdf, .. }
            | Step::Probe { bdf, .. } => Some(*bdf),
            _ => None,
        }
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(none)")
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::LoadModules { modules, .. } => write!(f, "load module {}", modules.join(" ")),
            Step::UnloadModules { modules } => write!(f, "unload modules {}", modules.join(" ")),
            Step::SetResetMethod { bdf, from, to } => {
                write!(f, "{bdf}: reset_method {from:?} -> {to:?}")
            }
            Step::SetAttr {
                bdf,
                file,
                from,
                to,
            } => write!(f, "{bdf}: {file} {from} -> {to}"),
            Step::HoldD0 { bdf } => write!(f, "{bdf}: power/control on (again, on vfio-pci)"),
            Step::Unbind { bdf, driver } => write!(f, "{bdf}: unbind from {driver}"),
            Step::Bind { bdf, driver } => write!(f, "{bdf}: bind to {driver}"),
            Step::SetOverride { bdf, from, to } => {
                write!(f, "{bdf}: driver_override {} -> {}", opt(from), opt(to))
            }
            Step::Probe { bdf, driver } => write!(f, "{bdf}: probe, expect {driver}"),
            Step::StopUnit { unit } => write!(f, "stop unit {unit}"),
            Step::StartUnit { unit } => write!(f, "start unit {unit}"),
            Step::Vtcon { vtcon, bind } => {
                write!(f, "{} {vtcon}", if *bind { "bind" } else { "unbind" })
            }
            Step::UnbindPlatform { driver, device } => {
                write!(f, "unbind firmware framebuffer {device} from {driver}")
            }
            Step::StopContainer { ctid } => write!(f, "shut down container {ctid}"),
            Step::StartContainer { ctid } => write!(f, "start container {ctid}"),
            Step::AwaitFree { bdfs } => write!(
                f,
                "wait until no process holds {}",
                bdfs.iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
}

/// One function pt-hook will prepare (or, with `keep`, leave alone).
#[derive(Debug, Clone, Serialize)]
pub struct PlannedDevice {
    pub info: DeviceInfo,
    /// "hostpci0", "hostpci1 (mapping someNic)", "IOMMU group 1 (with 0000:01:00.0)".
    pub origin: String,
    pub keep: bool,
    pub quirk: Option<String>,
    /// The `reset_method` list pt-hook will write, or None to leave it alone.
    pub reset_method: Option<String>,
    /// Power attributes to pin: (file, value).
    pub power: Vec<(String, String)>,
    /// A module the quirk profile needs and that is not loaded (vendor_reset): loaded first.
    pub load_module: Option<String>,
    pub warnings: Vec<String>,
}

/// Whether vfio-pci is loaded, so the plan knows to load it.
pub struct HostFacts {
    pub vfio_loaded: bool,
}

/// The pre-start steps for the non-kept devices, in the order they run:
/// load vfio-pci, pin reset methods and power, unbind host drivers, set overrides, probe.
pub fn pre_start_steps(devices: &[PlannedDevice], facts: &HostFacts) -> Vec<Step> {
    let active: Vec<&PlannedDevice> = devices.iter().filter(|d| !d.keep).collect();
    let mut steps = Vec::new();
    let needs_vfio = active
        .iter()
        .any(|d| d.info.driver.as_deref() != Some(VFIO));
    if needs_vfio && !facts.vfio_loaded {
        steps.push(Step::LoadModules {
            modules: vec![VFIO_MODULE.into()],
            unload_on_undo: false,
        });
    }
    // Modules the quirk profiles need (vendor_reset before `device_specific` is written).
    let mut quirk_modules: Vec<String> = Vec::new();
    for m in active.iter().filter_map(|d| d.load_module.clone()) {
        if !quirk_modules.contains(&m) {
            quirk_modules.push(m);
        }
    }
    if !quirk_modules.is_empty() {
        steps.push(Step::LoadModules {
            modules: quirk_modules,
            unload_on_undo: false,
        });
    }
    for d in &active {
        let bdf = d.info.bdf;
        if let (Some(to), Some(from)) = (&d.reset_method, &d.info.reset_method) {
            if to != from {
                steps.push(Step::SetResetMethod {
                    bdf,
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
        for (file, to) in &d.power {
            let from = match file.as_str() {
                "d3cold_allowed" => d.info.d3cold_allowed.clone(),
                "power/control" => d.info.power_control.clone(),
                _ => None,
            };
            if let Some(from) = from {
                if &from != to {
                    steps.push(Step::SetAttr {
                        bdf,
                        file: file.clone(),
                        from,
                        to: to.clone(),
                    });
                }
            }
        }
    }
    for d in &active {
        if let Some(drv) = &d.info.driver {
            if drv != VFIO {
                steps.push(Step::Unbind {
                    bdf: d.info.bdf,
                    driver: drv.clone(),
                });
            }
        }
    }
    for d in &active {
        if d.info.driver_override.as_deref() != Some(VFIO) {
            steps.push(Step::SetOverride {
                bdf: d.info.bdf,
                from: d.info.driver_override.clone(),
                to: Some(VFIO.into()),
            });
        }
    }
    for d in &active {
        if d.info.driver.as_deref() != Some(VFIO) {
            steps.push(Step::Probe {
                bdf: d.info.bdf,
                driver: VFIO.into(),
            });
        }
    }
    // vfio-pci's probe allows runtime PM (power/control "auto") whatever was pinned before
    // it: a pin of "on" is written again once the function is on vfio-pci (`HoldD0`).
    for d in &active {
        if d.info.driver.as_deref() == Some(VFIO) {
            continue;
        }
        if d.info.power_control.is_some()
            && d.power
                .iter()
                .any(|(f, v)| f == "power/control" && v == "on")
        {
            steps.push(Step::HoldD0 { bdf: d.info.bdf });
        }
    }
    steps
}

/// Steps of one class that act on devices: the settings (`reset_method`, power pins) or the
/// driver moves (unbind, `driver_override`, probe, bind).
fn device_class(s: &Step) -> Option<u8> {
    match s {
        Step::SetResetMethod { .. } | Step::SetAttr { .. } | Step::HoldD0 { .. } => Some(1),
        Step::Unbind { .. } | Step::Bind { .. } | Step::SetOverride { .. } | Step::Probe { .. } => {
            Some(2)
        }
        _ => None,
    }
}

/// The batches a step list runs in, in order. Consecutive steps of one device class (see
/// `device_class`) form one batch: each device's steps keep their order (its lane, see
/// `lanes`) and the lanes of different devices run in parallel, so one device's probe does
/// not wait for another device's slower unbind. Every other step (modules, units, consoles,
/// containers) is a batch of its own, so it still comes after everything before it and
/// before everything after it. A batch is journaled before any of its steps runs.
pub fn batches(steps: &[Step]) -> Vec<Vec<Step>> {
    let mut out: Vec<Vec<Step>> = Vec::new();
    for s in steps {
        if let Some(last) = out.last_mut() {
            let k = device_class(s);
            if k.is_some() && device_class(&last[0]) == k {
                last.push(s.clone());
                continue;
            }
        }
        out.push(vec![s.clone()]);
    }
    out
}

/// The lanes of a batch: the indices of each device's steps, in order, one lane per device
/// in the order the devices first appear (a step without a device is a lane of its own).
pub fn lanes(batch: &[Step]) -> Vec<Vec<usize>> {
    let mut out: Vec<(Option<Bdf>, Vec<usize>)> = Vec::new();
    for (i, s) in batch.iter().enumerate() {
        match s.bdf() {
            Some(b) => match out.iter_mut().find(|(d, _)| *d == Some(b)) {
                Some((_, v)) => v.push(i),
                None => out.push((Some(b), vec![i])),
            },
            None => out.push((None, vec![i])),
        }
    }
    out.into_iter().map(|(_, v)| v).collect()
}

/// The restore sequence for a journal: inverses in reverse order.
pub fn restore_steps(journal: &[Step]) -> Vec<Step> {
    journal.iter().rev().filter_map(Step::inverse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(bdf: &str, driver: Option<&str>) -> PlannedDevice {
        PlannedDevice {
            info: DeviceInfo {
                bdf: Bdf::parse(bdf).unwrap(),
                vendor: 0x1b36,
                device: 0x10,
                subsystem_vendor: None,
                subsystem_device: None,
                class: 0x010802,
                driver: driver.map(str::to_string),
                driver_override: None,
                iommu_group: Some(2),
                reset_method: Some("flr bus".into()),
                has_reset: true,
                boot_vga: None,
                d3cold_allowed: Some("1".into()),
                power_control: Some("auto".into()),
                link_speed: None,
                link_width: None,
            },
            origin: "hostpci0".into(),
            keep: false,
            quirk: None,
            reset_method: None,
            power: vec![],
            load_module: None,
            warnings: vec![],
        }
    }

    #[test]
    fn order_is_load_unbind_override_probe() {
        let d = vec![dev("0000:02:00.0", Some("nvme")), dev("0000:03:00.0", None)];
        let s = pre_start_steps(&d, &HostFacts { vfio_loaded: false });
        let names: Vec<String> = s.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names,
            vec![
                "load module vfio_pci",
                "0000:02:00.0: unbind from nvme",
                "0000:02:00.0: driver_override (none) -> vfio-pci",
                "0000:03:00.0: driver_override (none) -> vfio-pci",
                "0000:02:00.0: probe, expect vfio-pci",
                "0000:03:00.0: probe, expect vfio-pci",
            ]
        );
    }

    #[test]
    fn already_on_vfio_and_keep_do_nothing() {
        let mut a = dev("0000:02:00.0", Some("vfio-pci"));
        a.info.driver_override = Some("vfio-pci".into());
        let mut b = dev("0000:03:00.0", Some("nvme"));
        b.keep = true;
        assert!(pre_start_steps(&[a, b], &HostFacts { vfio_loaded: false }).is_empty());
    }

    #[test]
    fn device_steps_batch_together_in_one_lane_per_device() {
        let d = vec![
            dev("0000:02:00.0", Some("nvme")),
            dev("0000:03:00.0", Some("nvme")),
        ];
        let s = pre_start_steps(&d, &HostFacts { vfio_loaded: false });
        let b = batches(&s);
        // load | unbind x2, override x2, probe x2
        assert_eq!(b.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![1, 6]);
        // Each device's steps in their order: unbind, override, probe.
        let names = |batch: &[Step], lane: &[usize]| -> Vec<String> {
            lane.iter().map(|&i| batch[i].to_string()).collect()
        };
        let l = lanes(&b[1]);
        assert_eq!(l.len(), 2);
        assert_eq!(
            names(&b[1], &l[0]),
            vec![
                "0000:02:00.0: unbind from nvme",
                "0000:02:00.0: driver_override (none) -> vfio-pci",
                "0000:02:00.0: probe, expect vfio-pci",
            ]
        );
        assert_eq!(
            names(&b[1], &l[1]),
            vec![
                "0000:03:00.0: unbind from nvme",
                "0000:03:00.0: driver_override (none) -> vfio-pci",
                "0000:03:00.0: probe, expect vfio-pci",
            ]
        );
        let r = restore_steps(&s);
        let rb = batches(&r);
        // unbind x2, override x2, bind x2 (vfio-pci stays loaded)
        assert_eq!(rb.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![6]);
        assert_eq!(
            names(&rb[0], &lanes(&rb[0])[0]),
            vec![
                "0000:03:00.0: unbind from vfio-pci",
                "0000:03:00.0: driver_override vfio-pci -> (none)",
                "0000:03:00.0: bind to nvme",
            ]
        );
        // The same device twice: one lane, in order.
        let b0 = Bdf::parse("0000:02:00.0").unwrap();
        let twice = vec![
            Step::Unbind {
                bdf: b0,
                driver: "a".into(),
            },
            Step::Unbind {
                bdf: b0,
                driver: "b".into(),
            },
        ];
        assert_eq!(batches(&twice).len(), 1);
        assert_eq!(lanes(&twice), vec![vec![0, 1]]);
        // Settings and driver moves never share a batch; other steps are alone.
        let mut p = dev("0000:02:00.0", Some("nvme"));
        p.reset_method = Some("bus".into());
        p.power = vec![("power/control".into(), "on".into())];
        let s = pre_start_steps(&[p], &HostFacts { vfio_loaded: false });
        let b = batches(&s);
        // Load vfio-pci; reset_method and the pin; unbind, override, probe; the pin again
        // (vfio-pci's probe undid it).
        assert_eq!(
            b.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![1, 2, 3, 1]
        );
        let units = vec![
            Step::StopUnit { unit: "a".into() },
            Step::StopUnit { unit: "b".into() },
        ];
        assert_eq!(batches(&units).len(), 2);
    }

    #[test]
    fn restore_is_inverse_in_reverse() {
        let mut d = dev("0000:02:00.0", Some("nvme"));
        d.reset_method = Some("bus".into());
        d.power = vec![("power/control".into(), "on".into())];
        let s = pre_start_steps(&[d], &HostFacts { vfio_loaded: true });
        let r: Vec<String> = restore_steps(&s).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            r,
            vec![
                "0000:02:00.0: unbind from vfio-pci",
                "0000:02:00.0: driver_override vfio-pci -> (none)",
                "0000:02:00.0: bind to nvme",
                "0000:02:00.0: power/control on -> auto",
                "0000:02:00.0: reset_method \"bus\" -> \"flr bus\"",
            ]
        );
    }
}
