# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pt_hook_global_optspecs
    string join \n dry-run root= config= v/verbose q/quiet h/help V/version
end

function __fish_pt_hook_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pt_hook_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pt_hook_using_subcommand
    set -l cmd (__fish_pt_hook_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pt-hook -n "__fish_pt_hook_needs_command" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_needs_command" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_needs_command" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -s V -l version -d 'Print version'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "plan" -d 'Show what pre-start and post-stop would do for a VM; writes nothing'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "cleanup" -d 'Restore what a VM\'s pre-start left behind when no post-stop came (failed start, host crash). Without VMID: every VM with pt-hook state that is not running'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "accept" -d 'Accept the devices now at a VM\'s PCI addresses after they changed on purpose (a card replaced): rewrites what pt-hook remembers from the VM\'s last good start, so the next pre-start no longer refuses. Prints each change (old -> new); with --dry-run only prints'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "reset" -d 'Recover stuck devices with the escalation ladder (function reset, bus/slot reset, remove+rescan), checking each device after every step. Exit 3 when a device needs a host reboot'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "status" -d 'Every PCI device: ids, class, driver, IOMMU group, reset methods, link, quirk, owner (Proxmox VM or libvirt domain), and the health its resets left (HEALTH lines); with --cluster, every node\'s published devices'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "publish" -d 'Write this node\'s passthrough device inventory to /etc/pve/nodes/<node>/pt-hook.json for `status --cluster` (the hook phases and cleanup do it on their own)'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "quirks" -d 'List the quirk profiles, or show which one applies to a device and what it does'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "doctor" -d 'Check the host and VM configs for what breaks passthrough; exit 1 when a check fails'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "libvirt" -d 'libvirt hook mode: what /etc/libvirt/hooks/qemu (a link to pt-hook) runs, with the domain XML on stdin. `prepare begin` takes the domain\'s PCI hostdevs, `release end` gives them back; other operations are logged and accepted'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "install" -d 'Link the installed binary as a Proxmox hookscript (STORAGE\'s snippets directory from /etc/pve/storage.cfg) or, with --libvirt, as a libvirt hook; prints the `qm set` line. A link, never a copy; idempotent; refuses to replace anything else at that place'
complete -c pt-hook -n "__fish_pt_hook_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand plan" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand plan" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand plan" -l json -d 'Machine-readable output'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand plan" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand plan" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand plan" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand plan" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand cleanup" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand cleanup" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand cleanup" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand cleanup" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand cleanup" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand cleanup" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand accept" -l libvirt-uuid -d 'A libvirt domain (by its <uuid>) instead of a Proxmox VM' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand accept" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand accept" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand accept" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand accept" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand accept" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand accept" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand reset" -l method -d 'Force one kernel reset method for the first rung (flr, pm, bus, device_specific...)' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand reset" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand reset" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand reset" -l json -d 'Machine-readable output'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand reset" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand reset" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand reset" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand reset" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -l free -d 'With --cluster: where a free device is: vvvv:dddd, mapping=NAME, or words of the device name. Exit 1 when none is free on an online node' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -l json -d 'Machine-readable output'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -l prometheus -d 'Metrics in Prometheus text format (node_exporter textfile collector)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -l cluster -d 'Every node of the Proxmox cluster, from their published inventories'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand status" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand publish" -l phase -d 'What triggered it (recorded in the file)' -r -f -a "pre-start\t''
post-stop\t''
cleanup\t''
publish\t''"
complete -c pt-hook -n "__fish_pt_hook_using_subcommand publish" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand publish" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand publish" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand publish" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand publish" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand publish" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand quirks" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand quirks" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand quirks" -l json -d 'Machine-readable output'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand quirks" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand quirks" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand quirks" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand quirks" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand doctor" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand doctor" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand doctor" -l json -d 'Machine-readable output'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand doctor" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand doctor" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand doctor" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand libvirt" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand libvirt" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand libvirt" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand libvirt" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand libvirt" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand libvirt" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -l storage -d 'Proxmox storage for the hookscript link: a directory storage whose content includes `snippets` (its `path` in /etc/pve/storage.cfg + /snippets/pt-hook)' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -l binary -d 'The installed pt-hook the link points to (absolute; root-owned, not group/other writable)' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -l vmid -d 'VM id for the printed `qm set` line' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -l root -d 'Prefix for every host path (/sys, /etc, /run, /proc, /usr/share) [env: PT_HOOK_ROOT]' -r -F
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -l config -d 'pt-hook\'s config instead of the cluster and local files [default: /etc/pve/pt-hook/pt-hook.toml then /etc/pt-hook/pt-hook.toml, both optional]' -r
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -l libvirt -d 'Link it as a libvirt hook instead: /etc/libvirt/hooks/qemu.d/pt-hook (libvirt 6.5 or later)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -l dry-run -d 'Print every write instead of doing it (hook phases, libvirt, cleanup, reset, accept, install; plan, status, quirks and doctor never write and refuse it)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -s v -l verbose -d 'More output (debug lines)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -s q -l quiet -d 'Only errors'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand install" -s h -l help -d 'Print help'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "plan" -d 'Show what pre-start and post-stop would do for a VM; writes nothing'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "cleanup" -d 'Restore what a VM\'s pre-start left behind when no post-stop came (failed start, host crash). Without VMID: every VM with pt-hook state that is not running'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "accept" -d 'Accept the devices now at a VM\'s PCI addresses after they changed on purpose (a card replaced): rewrites what pt-hook remembers from the VM\'s last good start, so the next pre-start no longer refuses. Prints each change (old -> new); with --dry-run only prints'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "reset" -d 'Recover stuck devices with the escalation ladder (function reset, bus/slot reset, remove+rescan), checking each device after every step. Exit 3 when a device needs a host reboot'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "status" -d 'Every PCI device: ids, class, driver, IOMMU group, reset methods, link, quirk, owner (Proxmox VM or libvirt domain), and the health its resets left (HEALTH lines); with --cluster, every node\'s published devices'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "publish" -d 'Write this node\'s passthrough device inventory to /etc/pve/nodes/<node>/pt-hook.json for `status --cluster` (the hook phases and cleanup do it on their own)'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "quirks" -d 'List the quirk profiles, or show which one applies to a device and what it does'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "doctor" -d 'Check the host and VM configs for what breaks passthrough; exit 1 when a check fails'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "libvirt" -d 'libvirt hook mode: what /etc/libvirt/hooks/qemu (a link to pt-hook) runs, with the domain XML on stdin. `prepare begin` takes the domain\'s PCI hostdevs, `release end` gives them back; other operations are logged and accepted'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "install" -d 'Link the installed binary as a Proxmox hookscript (STORAGE\'s snippets directory from /etc/pve/storage.cfg) or, with --libvirt, as a libvirt hook; prints the `qm set` line. A link, never a copy; idempotent; refuses to replace anything else at that place'
complete -c pt-hook -n "__fish_pt_hook_using_subcommand help; and not __fish_seen_subcommand_from plan cleanup accept reset status publish quirks doctor libvirt install help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
