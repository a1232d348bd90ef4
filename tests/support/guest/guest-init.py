#!/usr/bin/python3
"""Stand-in for cloud-init in fireclaw's guest stand-in: configures this guest only from the
NoCloud seed image fireclaw wrote, read in user space with isoinfo (the kernel here cannot mount
ISO 9660) and parsed as YAML, as cloud-init would. Runs at every boot, before sshd."""

import os
import pwd
import subprocess

import yaml

SEED = "/run/fireclaw-seed.img"


def seed_file(name):
    out = subprocess.run(["isoinfo", "-R", "-i", SEED, "-x", "/" + name],
                         check=True, capture_output=True)
    return yaml.safe_load(out.stdout.decode())


def run(*args):
    subprocess.run(list(args), check=True)


def write(path, text, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


user_data = seed_file("user-data")
meta_data = seed_file("meta-data")
network = seed_file("network-config")

# Network: eth0 by MAC, static address, default route (network-config v2).
eth = network["ethernets"]["eth0"]
run("ip", "link", "set", "eth0", "down")
run("ip", "link", "set", "eth0", "address", eth["match"]["macaddress"])
run("ip", "addr", "flush", "dev", "eth0")
for address in eth["addresses"]:
    run("ip", "addr", "add", address, "dev", "eth0")
run("ip", "link", "set", "eth0", "up")
for route in eth.get("routes", []):
    if route.get("to") == "default":
        run("ip", "route", "replace", "default", "via", route["via"])
# Frames leave through a relay, not a NIC: checksums must be complete.
run("ethtool", "-K", "eth0", "tx", "off")
write("/etc/resolv.conf",
      "".join(f"nameserver {s}\n" for s in eth["nameservers"]["addresses"]), 0o644)

hostname = meta_data["local-hostname"]
write("/etc/hostname", hostname + "\n", 0o644)
subprocess.run(["hostname", hostname], check=False)
# Ubuntu guests resolve their own name without DNS; so does this stand-in, whatever
# manage_etc_hosts says (0.2.0's user-data does not set it).
if True:
    with open("/etc/hosts") as f:
        hosts = f.read()
    if f" {hostname}\n" not in hosts:
        write("/etc/hosts", hosts + f"127.0.1.1 {hostname}\n", 0o644)

for group in user_data.get("groups", []):
    run("groupadd", "-f", group)
for user in user_data["users"]:
    name = user["name"]
    groups = user.get("groups", [])
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    # cloud-init creates the groups a user is put in when they are missing.
    for group in groups:
        run("groupadd", "-f", group)
    user["groups"] = groups
    try:
        pwd.getpwnam(name)
    except KeyError:
        run("useradd", "-m", "-s", user.get("shell", "/bin/bash"),
            "-G", ",".join(user.get("groups", [])), name)
    if user.get("lock_passwd", True):
        run("passwd", "-q", "-l", name)
    if "sudo" in user:
        write(f"/etc/sudoers.d/90-cloud-init-{name}", f"{name} {user['sudo']}\n", 0o440)
    home = pwd.getpwnam(name).pw_dir
    ssh_dir = os.path.join(home, ".ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    keys = "".join(k + "\n" for k in user.get("ssh_authorized_keys", []))
    write(os.path.join(ssh_dir, "authorized_keys"), keys, 0o600)
    entry = pwd.getpwnam(name)
    for path in (ssh_dir, os.path.join(ssh_dir, "authorized_keys")):
        os.chown(path, entry.pw_uid, entry.pw_gid)

# Host keys: the ones fireclaw generated and pinned; without them (0.2.0), fresh ones once, as
# cloud-init's default ssh_deletekeys and key generation do on first boot.
keys = user_data.get("ssh_keys")
if keys:
    for f in os.listdir("/etc/ssh"):
        if f.startswith("ssh_host_"):
            os.remove(os.path.join("/etc/ssh", f))
    write("/etc/ssh/ssh_host_ed25519_key", keys["ed25519_private"], 0o600)
    write("/etc/ssh/ssh_host_ed25519_key.pub", keys["ed25519_public"] + "\n", 0o644)
    os.makedirs("/etc/ssh/sshd_config.d", exist_ok=True)
    write("/etc/ssh/sshd_config.d/fireclaw-guest.conf",
          "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n", 0o644)
elif not os.path.exists("/var/lib/fireclaw-guest-keys-made"):
    for f in os.listdir("/etc/ssh"):
        if f.startswith("ssh_host_"):
            os.remove(os.path.join("/etc/ssh", f))
    run("ssh-keygen", "-A")
    write("/var/lib/fireclaw-guest-keys-made", "", 0o644)
