#!/usr/bin/env bash
# fireclaw image bake: cleans the builder guest's identity so that no two instances made from
# the baked image share a secret or an identity. Run as root over SSH in the builder VM, with the
# builder's instance id as $1, just before the VM is shut down; the installed image and browser
# stay. What the shutdown itself writes afterwards (the random seed, wtmp) is removed from the
# disk by the host once the VM is down.
set -euo pipefail

say() {
    printf 'fireclaw-bake-clean: %s\n' "$*" >&2
}

# The whole script is one function, read in full before it runs: it arrives on bash's stdin
# (`bash -s`), and a command below that read stdin would otherwise eat the rest of the script.
main() {
    id=${1:-}
    [[ "$id" =~ ^[a-z0-9_-]+$ ]] || { say "error: no builder id given"; exit 1; }

    # Docker writes its identity while it runs: stop it first (socket too, so nothing restarts it).
    say "stopping docker"
    systemctl stop docker.socket docker.service containerd.service >/dev/null 2>&1 || true

    say "cleaning cloud-init's state, logs, seed and machine id"
    # --machine-id leaves /etc/machine-id holding "uninitialized", so the next boot is a first boot.
    if cloud-init clean --help 2>/dev/null | grep -q -- '--configs'; then
        cloud-init clean --logs --seed --machine-id --configs all
    else
        cloud-init clean --logs --seed --machine-id
        # The network files cloud-init rendered for the builder's MAC and address.
        rm -f /etc/systemd/network/10-cloud-init-*.network /etc/netplan/50-cloud-init.yaml \
            /etc/network/interfaces.d/50-cloud-init /etc/NetworkManager/system-connections/cloud-init-*
    fi
    # Where cloud-init did not leave the marker (an older one), write it.
    if [[ ! -s /etc/machine-id ]]; then
        printf 'uninitialized\n' >/etc/machine-id
    fi

    say "removing machine secrets, Docker's identity, host keys and the builder's files"
    rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed /var/lib/systemd/credential.secret \
        /var/lib/docker/engine-id /var/lib/docker/network/files/local-kv.db /etc/docker/key.json \
        /etc/ssh/ssh_host_* /etc/hostname
    rm -f /home/ubuntu/.ssh/authorized_keys
    rm -rf "/home/ubuntu/.openclaw-$id" "/home/ubuntu/openclaw-$id" /var/lib/fireclaw-bake

    say "removing histories, journals, login records, apt's lists and cache, temporary files"
    rm -f /root/.bash_history /home/*/.bash_history /root/.lesshst /home/*/.lesshst
    # The journal moves to /run until the shutdown, so the shutdown's own lines never reach the disk.
    journalctl --relinquish-var >/dev/null 2>&1 || true
    rm -rf /var/log/journal/*
    rm -f /var/log/wtmp /var/log/btmp /var/log/lastlog /var/log/cloud-init*.log
    apt-get clean >/dev/null 2>&1 || true
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
    find /tmp /var/tmp -mindepth 1 -delete 2>/dev/null || true
    sync
    say "done"
}

main "$@" </dev/null
