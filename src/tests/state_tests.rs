//! One state API keyed by `VmKey`: what a libvirt domain holds is taken for a Proxmox VM too.

use crate::engine::lifecycle;
use crate::engine::state::{self, Domain, VmKey};
use crate::host::sim::SimHost;
use crate::pci::Bdf;
use crate::tests::test_support::{timeouts, T};

const UUID: &str = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0";

fn bdf(s: &str) -> Bdf {
    Bdf::parse(s).unwrap()
}

fn planned(t: &T, vmid: u32) -> Vec<Bdf> {
    let p = lifecycle::plan_vm(&t.ctx_dry(true), vmid).unwrap();
    p.devices.iter().map(|d| d.info.bdf).collect()
}

#[test]
fn a_mapping_entry_held_by_a_libvirt_domain_is_skipped_when_the_entry_is_chosen() {
    let t = T::build(
        SimHost::gpu_host(),
        &[(110, "machine: q35\nhostpci0: mapping=disks\n")],
        timeouts(),
    );
    let dir = t.sim.root_dir().join("etc/pve/mapping");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pci.cfg"),
        "disks\n\tmap node=pve1,path=0000:02:00.0,id=1b36:0010\n\tmap node=pve1,path=0000:03:00.0,id=1b36:0010\n",
    )
    .unwrap();
    // Nothing held: Proxmox (and pt-hook) take the first entry.
    assert!(planned(&t, 110).contains(&bdf("0000:02:00.0")));

    // A libvirt domain takes the first entry's device.
    let key = VmKey::Libvirt(Domain {
        uuid: UUID.into(),
        name: "web".into(),
    });
    let ctx = t.ctx();
    let p = lifecycle::plan_bdfs(&ctx, &key, &[(bdf("0000:02:00.0"), "hostdev 0".into())]).unwrap();
    lifecycle::prepare(&ctx, &key, p, &|| unreachable!()).unwrap();
    assert!(matches!(
        state::owner_of(&*t.sim, &bdf("0000:02:00.0"), &VmKey::Pve(110)),
        Some(VmKey::Libvirt(d)) if d.uuid == UUID
    ));

    // The entry it holds is skipped: the VM gets the second one.
    let got = planned(&t, 110);
    assert!(got.contains(&bdf("0000:03:00.0")), "{got:?}");
    assert!(!got.contains(&bdf("0000:02:00.0")), "{got:?}");
}
