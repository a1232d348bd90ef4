//! The guest network policy with real packets: an "uplink" namespace in the host sandbox plays
//! the outside world (a public documentation address, the cloud metadata address and a private
//! address), and guest stand-ins try to reach it, the host and each other. Also: the secrets
//! audit over every file fireclaw writes, the journal and every command's output. Root only:
//! run through `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::fleet::Fleet;
use support::legacy::make_020_instance;
use support::secrets::runtime_secret;

use support::uplink::{self, BRIDGE, METADATA, Outcome, PRIVATE};

fn add_uplink(fleet: &Fleet) {
    uplink::add(&fleet.host);
}

fn connect(fleet: &Fleet, id: &str, address: &str, port: u16) -> Outcome {
    Outcome::of(&fleet.guest(id, &uplink::connect_script(address, port)))
}

fn doctor_egress(fleet: &Fleet) -> (bool, Vec<serde_json::Value>) {
    let output = fleet.fireclaw("doctor --json");
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("egress"))
        .cloned()
        .collect();
    (output.status.success(), checks)
}

fn failing(checks: &[serde_json::Value]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| c["status"] != "pass")
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect()
}

#[test]
#[ignore = "needs root: sandbox"]
fn guests_reach_the_internet_but_not_the_host_metadata_private_ranges_or_each_other() {
    let fleet = Fleet::new("egress");
    add_uplink(&fleet);
    fleet.healthy("a");
    // setup takes an allowlist too (a network the uplink does not serve: it only has to show up).
    fleet.setup(
        "b",
        "--openai-api-key sk-egress-b --allow-private-egress 192.168.77.0/24",
    );
    make_020_instance(&fleet, "old", 9, 18899, "sk-legacy-egress");
    fleet.fireclaw_ok("provision old --ssh-timeout 60 --health-timeout 30");
    let b_ip = fleet.env_value("b", "VM_IP");
    assert!(
        fleet
            .host
            .sh("iptables -S FC-FWD-fc-br0")
            .contains(&format!("-s {b_ip}/32 -d 192.168.77.0/24")),
        "b's allowlist is not in the chain"
    );

    for id in ["a", "b", "old"] {
        uplink::assert_default_policy(id, |address, port| connect(&fleet, id, address, port));
        // ICMP echo to the gateway still answers (guests use it to check their network).
        fleet.guest(id, &format!("ping -c 1 -W 2 {BRIDGE}"));
    }

    // Neighbours: not with br_netfilter off (port isolation), nor on (isolation and FORWARD),
    // nor when a guest routes to its neighbour through the gateway.
    for netfilter in ["0", "1"] {
        fleet.host.sh(&format!(
            "sysctl -qw net.bridge.bridge-nf-call-iptables={netfilter}"
        ));
        assert_ne!(connect(&fleet, "a", &b_ip, 18789), Outcome::Answered);
        fleet.guest(
            "a",
            &format!("ip route replace {b_ip}/32 via {BRIDGE} dev eth0"),
        );
        assert_ne!(
            connect(&fleet, "a", &b_ip, 18789),
            Outcome::Answered,
            "through the gateway, br_netfilter={netfilter}"
        );
        fleet.guest("a", &format!("ip route del {b_ip}/32"));
    }

    // No IPv6 for guests to go around the IPv4 policy: none on the bridge and the taps.
    for link in ["fc-br0".to_owned(), fleet.tap("a"), fleet.tap("b")] {
        assert_eq!(
            fleet
                .host
                .sh(&format!("cat /proc/sys/net/ipv6/conf/{link}/disable_ipv6"))
                .trim(),
            "1",
            "{link}"
        );
    }
    assert_eq!(fleet.host.sh("ip -6 addr show dev fc-br0").trim(), "");
    // And with packets: an all-nodes ping from a guest is answered by no one but itself.
    let own = fleet.guest(
        "a",
        "ip -6 -o addr show dev eth0 scope link | awk '{print $4}' | cut -d/ -f1",
    );
    let own = own.trim();
    assert!(
        own.starts_with("fe80:"),
        "guest a has no IPv6 link-local address: {own}"
    );
    let pings = fleet.guest("a", "ping -6 -c 3 -i 0.3 -W 1 -I eth0 ff02::1 2>&1 || true");
    assert!(pings.contains("ff02::1"), "the ping did not run: {pings}");
    let others: Vec<&str> = pings
        .lines()
        .filter(|l| l.contains("bytes from") && !l.contains(own))
        .collect();
    assert!(others.is_empty(), "answered over IPv6: {others:?}");

    // The host still reaches every guest: SSH and the proxy.
    for id in ["a", "b", "old"] {
        assert_eq!(
            fleet
                .fireclaw_ok(&format!("shell {id} echo over-ssh"))
                .trim(),
            "over-ssh"
        );
        let port = fleet.env_value(id, "HOST_PORT");
        fleet.host.sh(&format!(
            "curl -fsS --max-time 5 http://127.0.0.1:{port}/healthz"
        ));
    }

    // 0.2.0's unit got the drop-in that applies the policy before it starts, and its start ran it.
    assert!(fleet.host.ok(
        "grep -q 'egress apply' /etc/systemd/system/firecracker-vmdemo-old.service.d/fireclaw-egress.conf"
    ));
    assert!(
        fleet
            .host
            .sh("journalctl --no-pager -o cat -u firecracker-vmdemo-old.service")
            .contains("egress policy applied on fc-br0")
    );
    let (ok, checks) = doctor_egress(&fleet);
    assert!(failing(&checks).is_empty(), "{:?}", failing(&checks));
    assert!(checks.len() >= 7, "{checks:?}");
    let _ = ok;

    // Per instance: a, and only a, reaches the private network once it is allowed.
    let out = fleet.fireclaw_ok(
        "provision a --allow-private-egress 10.99.0.0/24 --ssh-timeout 60 --health-timeout 30",
    );
    assert!(out.contains("healthy"), "{out}");
    let saved: serde_json::Value =
        serde_json::from_str(&fleet.host.sh("cat /var/lib/fireclaw/.vm-a/fireclaw.json")).unwrap();
    assert_eq!(
        saved["allow_private_egress"],
        serde_json::json!(["10.99.0.0/24"])
    );
    let status = |id: &str| -> serde_json::Value {
        serde_json::from_str(&fleet.fireclaw_ok(&format!("status {id} --json"))).unwrap()
    };
    assert_eq!(
        status("a")["allow_private_egress"],
        serde_json::json!(["10.99.0.0/24"])
    );
    assert!(status("old")["allow_private_egress"].is_null());
    assert!(
        fleet
            .fireclaw_ok("status a")
            .contains("private egress 10.99.0.0/24")
    );
    assert_eq!(connect(&fleet, "a", PRIVATE, 8080), Outcome::Answered);
    assert_eq!(connect(&fleet, "b", PRIVATE, 8080), Outcome::RefusedFast);
    assert_eq!(connect(&fleet, "a", METADATA, 8080), Outcome::RefusedFast);
    // Outside the private ranges nothing can be allowed, and a refused provision changes nothing.
    let refused = fleet.fireclaw("provision a --allow-private-egress 169.254.169.254/32");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not inside"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(
            &fleet.host.sh("cat /var/lib/fireclaw/.vm-a/fireclaw.json")
        )
        .unwrap(),
        saved
    );

    // doctor notices a per-instance rule that no longer matches the saved state.
    fleet.host.sh(&format!(
        "iptables -D FC-FWD-fc-br0 -i fc-br0 -s {}/32 -d 10.99.0.0/24 -m comment --comment 'fireclaw: instance a may reach 10.99.0.0/24' -j ACCEPT",
        fleet.env_value("a", "VM_IP")
    ));
    let (ok, checks) = doctor_egress(&fleet);
    assert!(!ok);
    assert!(
        failing(&checks)
            .iter()
            .any(|f| f.contains("instance a may reach 10.99.0.0/24")),
        "{checks:?}"
    );
    // ... and a rule ahead of fireclaw's jump that accepts guest traffic.
    fleet.host.sh("iptables -I FORWARD 1 -i fc-br0 -j ACCEPT");
    let (_, checks) = doctor_egress(&fleet);
    assert!(
        failing(&checks)
            .iter()
            .any(|f| f.contains("egress hook filter FORWARD") && f.contains("-i fc-br0 -j ACCEPT")),
        "{checks:?}"
    );
    fleet.fireclaw_ok("egress apply");
    let (_, checks) = doctor_egress(&fleet);
    assert!(failing(&checks).is_empty(), "{:?}", failing(&checks));
    assert_eq!(connect(&fleet, "a", PRIVATE, 8080), Outcome::Answered);
    fleet.host.sh("iptables -D FORWARD -i fc-br0 -j ACCEPT");

    // Host-wide: every guest, the 0.2.0 one included, once the allowlist names it.
    fleet.host.sh(&format!(
        "echo '{PRIVATE}  # a private registry' > /var/lib/fireclaw/private-egress.allow"
    ));
    fleet.fireclaw_ok("egress apply");
    for id in ["a", "b", "old"] {
        assert_eq!(
            connect(&fleet, id, PRIVATE, 8080),
            Outcome::Answered,
            "{id}"
        );
        assert_eq!(
            connect(&fleet, id, METADATA, 8080),
            Outcome::RefusedFast,
            "{id}"
        );
    }
    let shown: serde_json::Value =
        serde_json::from_str(&fleet.fireclaw_ok("egress show --json")).unwrap();
    assert_eq!(shown["host_allow"], serde_json::json!(["10.99.0.1/32"]));
    assert_eq!(shown["applied"], serde_json::json!(true));

    // Destroying a takes its allow rule with it; the drop-in goes with the 0.2.0 instance.
    fleet.fireclaw_ok("destroy a --force");
    assert!(
        !fleet
            .host
            .sh("iptables -S FC-FWD-fc-br0")
            .contains("instance a")
    );
    fleet.fireclaw_ok("destroy old --force");
    assert!(
        !fleet
            .host
            .ok("test -e /etc/systemd/system/firecracker-vmdemo-old.service.d")
    );
}

/// Where each kind of secret belongs, with mode, owner and group: files of its own instance,
/// root's alone, except what its confined VMM must read (the seed image, group-readable by the
/// VMM's group) and own (its disk, and a suspended guest's memory); nowhere else.
const SECRET_HOMES: [(&str, &str); 7] = [
    (".env", "600 root root"),
    ("provision.vars", "600 root root"),
    (".token", "600 root root"),
    ("seed.img", "640 root fcvm-a"),
    ("user-data", "600 root root"),
    // The seed inside the instance's own rootfs copy (user-data carries the guest host key).
    ("images/rootfs.ext4", "600 fcvm-a fcvm-a"),
    // A suspended guest's memory holds whatever the guest held (the stand-in's holds none).
    ("vmm/snapshot.mem", "600 fcvm-a fcvm-a"),
];

#[test]
#[ignore = "needs root: sandbox"]
fn secrets_appear_only_in_their_0600_files_never_in_output_units_logs_or_the_journal() {
    let fleet = Fleet::new("secretaudit");
    // Made at run time: no checkout or build anywhere holds them, so the greps skip nothing.
    let openai = runtime_secret("sk-audit-openai-");
    let anthropic = runtime_secret("sk-ant-audit-");
    let bot_secret = runtime_secret("AAH-audit-bot-");
    let telegram = format!("123456:{bot_secret}");
    let mut outputs = String::new();
    let mut run = |args: &str| {
        let output = fleet.host.exec(&format!(
            "export PATH={}:$PATH ANTHROPIC_API_KEY={anthropic}; fireclaw {args}",
            support::sandbox::BIN_IN_SANDBOX
        ));
        outputs.push_str(&format!(
            "$ fireclaw {args}\n{}{}\n",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
        output.status.success()
    };
    let waits = "--ssh-timeout 60 --health-timeout 30";
    // A small guest: the audit greps its memory file (sparse, read as zeros) while suspended.
    let create = format!(
        "setup --instance a --skip-browser-install --disk-size 64M --vm-mem-mib 128 {waits} --openai-api-key {openai} --telegram-token {telegram} --telegram-users 42"
    );
    assert!(run(&create));
    assert!(run(&format!(
        "setup --instance b --dry-run --openai-api-key {openai} --telegram-token {telegram} --telegram-users 42"
    )));
    for args in [
        "list",
        "list --json",
        "status",
        "status --json",
        "status a",
        "status a --json",
        "doctor",
        "doctor --json",
        "egress show --json",
        "stop a",
        "start a --ssh-timeout 60 --health-timeout 30",
        "provision a --model anthropic/claude-opus-4 --ssh-timeout 60 --health-timeout 30",
        "suspend a",
        "resume a --ssh-timeout 60 --health-timeout 30",
    ] {
        assert!(run(args), "fireclaw {args} failed:\n{outputs}");
    }
    // Refusals that involve secrets say what is wrong without repeating them.
    for args in [
        create.clone(),
        "provision a --model minimax/MiniMax-M2.1".to_owned(),
        format!("provision a --telegram-token '{telegram}-but-with space'"),
        format!("setup --instance ../a --openai-api-key {openai}"),
    ] {
        assert!(!run(&args), "fireclaw {args} should fail");
    }
    let token = fleet.fireclaw_ok("token a").trim().to_owned();
    assert_eq!(token.len(), 64);
    // Line 2 of an OpenSSH key is mostly a header every key shares; line 3 is key material.
    let host_key = fleet.guest("a", "sed -n 3p /etc/ssh/ssh_host_ed25519_key");
    let host_key = host_key.trim();
    assert!(host_key.len() > 40, "no guest host key: {host_key}");
    // The greps below run while a is suspended, its memory on disk.
    assert!(run("suspend a"), "fireclaw suspend a failed:\n{outputs}");
    // The memory file is the VMM's own, readable by root and that account only.
    assert_eq!(
        fleet
            .host
            .sh("stat -c '%a %U %G' /srv/firecracker/vm-demo/a/vmm/snapshot.mem")
            .trim(),
        "600 fcvm-a fcvm-a"
    );

    let journal = fleet.host.sh("journalctl --no-pager -a -o cat");
    let units = fleet.host.sh("cat /etc/systemd/system/*.service");
    for (name, secret) in [
        ("OpenAI key", openai.as_str()),
        ("Anthropic key", anthropic.as_str()),
        ("Telegram token", telegram.as_str()),
        ("gateway token", token.as_str()),
        ("guest host key", host_key),
    ] {
        // Outputs hold the secrets only where the user typed them on the command line.
        let shown: Vec<&str> = outputs
            .lines()
            .filter(|l| l.contains(secret) && !l.starts_with("$ fireclaw"))
            .collect();
        assert!(shown.is_empty(), "{name} in command output: {shown:?}");
        assert!(!journal.contains(secret), "{name} in the journal");
        assert!(!units.contains(secret), "{name} in a unit file");
        let hits = fleet.host.sh(&format!(
            "grep -rlaF -- '{secret}' /var/lib/fireclaw /srv/firecracker /etc /run /tmp /var/tmp /var/log /root /home 2>/dev/null \
             | xargs -r stat -c '%a %U %G %n'"
        ));
        assert!(
            !hits.trim().is_empty(),
            "{name} found nowhere: the audit is blind"
        );
        for hit in hits.lines() {
            let mut fields = hit.splitn(4, ' ');
            let access = [
                fields.next().unwrap(),
                fields.next().unwrap(),
                fields.next().unwrap(),
            ]
            .join(" ");
            let path = fields.next().unwrap();
            let home = SECRET_HOMES
                .iter()
                .find(|(h, _)| path.ends_with(&format!("/{h}")));
            let own_instance = path.starts_with("/var/lib/fireclaw/.vm-a/")
                || path.starts_with("/srv/firecracker/vm-demo/a/");
            assert!(
                home.is_some_and(|(_, expected)| access == *expected) && own_instance,
                "{name} in {hit}"
            );
        }
    }
}
