//! An instance exactly as fireclaw 0.2.0 leaves it on disk (docs/ARCHITECTURE.md, 0.2.0): its plain-v1 state
//! without `fireclaw.json`, its assets with a seed made by `cloud-localds` from 0.2.0's user-data
//! (no host key: it is pinned on first login), its `start-vm.sh`/`stop-vm.sh`, which call `ip`,
//! `bridge`, `sysctl`, `iptables` and `curl`, and its two units.

use super::fleet::Fleet;
use super::sandbox::BIN_IN_SANDBOX;

/// Builds instance `id` at 172.16.0.`octet` with proxy port `port` in the fleet's host sandbox.
pub fn make_020_instance(fleet: &Fleet, id: &str, octet: u8, port: u16, openai_key: &str) {
    let script = format!(
        r#"set -e
id={id}; ip=172.16.0.{octet}; port={port}; tap=t$(echo {id} | tr -cd 'a-z0-9' | cut -c1-6){octet}
mac=06:fc:00:10:00:$(printf %02x {octet})
fc=/srv/firecracker/vm-demo/$id; st=/var/lib/fireclaw/.vm-$id; sock=$fc/firecracker.socket
install -d -m 0700 /var/lib/fireclaw $st $st/config $st/workspace /srv/firecracker/vm-demo $fc $fc/images $fc/config $fc/logs
key=/home/ubuntu/.ssh/vmdemo_vm
install -d -m 0700 /home/ubuntu/.ssh
[ -f $key ] || ssh-keygen -q -t ed25519 -N '' -f $key
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
umask 077
cat > $st/.env <<ENV
FIRECLAW_STATE_FORMAT=plain-v1
INSTANCE_ID=$id
HOST_PORT=$port
VM_IP=$ip
VM_TAP=$tap
VM_MAC=$mac
GATEWAY_TOKEN=$token
MODEL=openai/gpt-5.5
SKILLS=github,tmux
TELEGRAM_USERS=
OPENCLAW_IMAGE=ghcr.io/openclaw/openclaw:latest
VM_VCPU=1
VM_MEM_MIB=512
DISK_SIZE=64M
API_SOCK=$sock
SSH_KEY_PATH=$key
SKIP_BROWSER_INSTALL=true
ANTHROPIC_API_KEY=
OPENAI_API_KEY={openai_key}
MINIMAX_API_KEY=
ENV
echo $token > $st/.token
cat > $st/provision.vars <<VARS
FIRECLAW_STATE_FORMAT=plain-v1
INSTANCE_ID=$id
TELEGRAM_TOKEN=
TELEGRAM_USERS=
MODEL=openai/gpt-5.5
SKILLS=github,tmux
GATEWAY_TOKEN=$token
OPENCLAW_IMAGE=ghcr.io/openclaw/openclaw:latest
SKIP_BROWSER_INSTALL=true
DISK_SIZE=64M
ANTHROPIC_API_KEY=
OPENAI_API_KEY={openai_key}
MINIMAX_API_KEY=
VARS
umask 022
cp /srv/firecracker/base/images/vmlinux $fc/images/vmlinux
cp /srv/firecracker/base/images/rootfs.ext4 $fc/images/rootfs.ext4 && truncate -s 64M $fc/images/rootfs.ext4
cat > $fc/config/user-data <<UD
{user_data}UD
printf 'instance-id: %s\nlocal-hostname: %s\n' $id $id > $fc/config/meta-data
cat > $fc/config/network-config <<NC
{network_config}NC
cloud-localds --network-config=$fc/config/network-config $fc/images/seed.img $fc/config/user-data $fc/config/meta-data
cat > $fc/config/vm-config.json <<VM
{{"boot-source": {{"kernel_image_path": "$fc/images/vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}},
 "drives": [{{"drive_id": "rootfs", "path_on_host": "$fc/images/rootfs.ext4", "is_root_device": true, "is_read_only": false}},
            {{"drive_id": "seed", "path_on_host": "$fc/images/seed.img", "is_root_device": false, "is_read_only": true}}],
 "machine-config": {{"vcpu_count": 1, "mem_size_mib": 512, "smt": false}},
 "network-interfaces": [{{"iface_id": "eth0", "guest_mac": "$mac", "host_dev_name": "$tap"}}],
 "logger": {{"log_path": "$fc/logs/firecracker.log", "level": "Info"}}}}
VM
cat > $fc/start-vm.sh <<START
#!/usr/bin/env bash
set -euo pipefail
ip link show fc-br0 >/dev/null 2>&1 || ip link add fc-br0 type bridge
ip addr show dev fc-br0 | grep -q 'inet 172.16.0.1/24' || ip addr add 172.16.0.1/24 dev fc-br0
ip link set fc-br0 up
sysctl -w net.ipv4.ip_forward=1 >/dev/null
iptables -t nat -C POSTROUTING -s 172.16.0.0/24 ! -o fc-br0 -j MASQUERADE 2>/dev/null || iptables -t nat -A POSTROUTING -s 172.16.0.0/24 ! -o fc-br0 -j MASQUERADE
iptables -C FORWARD -i fc-br0 -o fc-br0 -j DROP 2>/dev/null || iptables -I FORWARD 1 -i fc-br0 -o fc-br0 -j DROP
ip link show $tap >/dev/null 2>&1 || ip tuntap add dev $tap mode tap user root
ip link set $tap master fc-br0
bridge link set dev $tap isolated on
ip link set $tap up
rm -f $sock
exec {BIN_IN_SANDBOX}/firecracker --api-sock $sock --config-file $fc/config/vm-config.json
START
cat > $fc/stop-vm.sh <<STOP
#!/usr/bin/env bash
if [ -S $sock ]; then
  curl -fsS --unix-socket $sock -X PUT http://localhost/actions -H 'Content-Type: application/json' -d '{{"action_type": "SendCtrlAltDel"}}' >/dev/null 2>&1 || true
  for i in \$(seq 20); do curl -fsS --unix-socket $sock http://localhost/ >/dev/null 2>&1 || break; sleep 1; done
fi
ip link del $tap 2>/dev/null || true
rm -f $sock
STOP
chmod 0755 $fc/start-vm.sh $fc/stop-vm.sh
cat > /etc/systemd/system/firecracker-vmdemo-$id.service <<UNIT
[Unit]
Description=Firecracker VM ($id)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=$fc/start-vm.sh
ExecStop=$fc/stop-vm.sh
TimeoutStopSec=45
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
cat > /etc/systemd/system/vmdemo-proxy-$id.service <<UNIT
[Unit]
Description=Localhost proxy for VM ($id)
After=firecracker-vmdemo-$id.service
Requires=firecracker-vmdemo-$id.service
PartOf=firecracker-vmdemo-$id.service

[Service]
Type=simple
DynamicUser=yes
ExecStart=/usr/bin/socat TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork TCP:$ip:18789
SuccessExitStatus=143
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target firecracker-vmdemo-$id.service
UNIT
systemctl daemon-reload
"#,
        // Shell expressions: the heredocs expand them inside the sandbox.
        user_data = user_data_020("$(cat $key.pub)"),
        network_config = network_config_020("$mac", "$ip"),
    );
    fleet.host.sh(&script);
}

/// The user-data fireclaw 0.2.0 writes for a client key.
pub fn user_data_020(authorized_key: &str) -> String {
    format!(
        "#cloud-config
users:
  - name: ubuntu
    groups: [sudo, docker]
    shell: /bin/bash
    sudo: ALL=(ALL) NOPASSWD:ALL
    lock_passwd: true
    ssh_authorized_keys:
      - {authorized_key}
packages: [jq, curl]
"
    )
}

/// The network-config fireclaw 0.2.0 writes for a MAC and an address.
pub fn network_config_020(mac: &str, ip: &str) -> String {
    format!(
        "version: 2
ethernets:
  eth0:
    match:
      macaddress: \"{mac}\"
    set-name: eth0
    addresses: [{ip}/24]
    routes:
      - to: default
        via: 172.16.0.1
    nameservers:
      addresses: [1.1.1.1, 8.8.8.8]
"
    )
}
