//! The host side of an instance against a real systemd and the real kernel network stack, in a
//! sandbox (tests/support/sandbox.rs): the VM unit with the Firecracker stand-in as its main
//! process, bridge, isolated taps, NAT and FORWARD rules, the localhost proxy as a dynamic user,
//! crash recovery, clean stops, reboots and power cuts. Each instance's "guest side" is a network
//! namespace holding the VM's MAC and IP, which the stand-in connects to the tap.
//!
//! Root only: run through `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sandbox::{BIN_IN_SANDBOX, Sandbox};

struct Instance {
    id: &'static str,
    ip: String,
    port: String,
    tap: String,
}

impl Instance {
    fn vm_unit(&self) -> String {
        format!("firecracker-vmdemo-{}.service", self.id)
    }
    fn proxy_unit(&self) -> String {
        format!("vmdemo-proxy-{}.service", self.id)
    }
    /// `API_SOCK`: a link to the socket the confined VMM binds in its own dir.
    fn socket(&self) -> String {
        format!("/srv/firecracker/vm-demo/{}/firecracker.socket", self.id)
    }
    fn vmm_socket(&self) -> String {
        format!("/srv/firecracker/vm-demo/{}/vmm/api.sock", self.id)
    }
    fn netns(&self) -> String {
        format!("g{}", self.tap)
    }
}

/// Creates an instance's host side through the library's install steps, plus its guest side.
fn install(sandbox: &Sandbox, id: &'static str) -> Instance {
    sandbox.base_images();
    let line = sandbox.sh(&format!(
        "{BIN_IN_SANDBOX}/sandbox_install --instance {id} --openai-api-key sk-sandbox --disk-size 64M"
    ));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let instance = Instance {
        id,
        ip: fields[0].to_owned(),
        port: fields[1].to_owned(),
        tap: fields[2].to_owned(),
    };
    let mac = fields[3];
    // The guest side: a namespace whose eth0 carries the VM's MAC and IP, reached only through
    // the tap that the stand-in relays to the veth `v<tap>` (a bare wire: no ARP, no IPv6).
    sandbox.sh(&format!(
        "ip netns add {ns} && ip link add v{tap} type veth peer name eth0 netns {ns} && \
         sysctl -qw net.ipv6.conf.v{tap}.disable_ipv6=1 && ip link set v{tap} arp off up && \
         ip -n {ns} link set lo up && ip -n {ns} link set eth0 address {mac} && \
         ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && \
         ip -n {ns} route add default via 172.16.0.1 && \
         ip netns exec {ns} ethtool -K eth0 tx off >/dev/null && \
         mkdir -p /run/fireclaw-standin && echo v{tap} > /run/fireclaw-standin/{tap}.peer",
        ns = instance.netns(),
        tap = instance.tap,
        ip = instance.ip,
    ));
    instance
}

/// A TCP server on the guest side answering `hello from <id>` on port 18789.
fn serve_on_guest(sandbox: &Sandbox, instance: &Instance) {
    sandbox.sh(&format!(
        "systemd-run --unit=guest-server-{id} ip netns exec {ns} socat TCP-LISTEN:18789,reuseaddr,fork SYSTEM:'echo hello from {id}'",
        id = instance.id,
        ns = instance.netns()
    ));
    sandbox.sh(&format!(
        "for i in $(seq 50); do ip netns exec {ns} ss -ltn | grep -q :18789 && exit 0; sleep 0.1; done; exit 1",
        ns = instance.netns()
    ));
}

fn start(sandbox: &Sandbox, instance: &Instance) {
    sandbox.sh(&format!("systemctl start {}", instance.vm_unit()));
    // The stand-in relays once it has opened the tap; the API answering means it is there.
    sandbox.sh(&format!(
        "for i in $(seq 100); do curl -sf --unix-socket {} http://localhost/ >/dev/null && exit 0; sleep 0.1; done; exit 1",
        instance.socket()
    ));
}

fn isolated(sandbox: &Sandbox, tap: &str) -> bool {
    sandbox
        .sh(&format!("bridge -d link show dev {tap}"))
        .contains("isolated on")
}

/// fireclaw's guest-to-guest rule as `iptables -S` prints it.
const NEIGHBOUR_DROP: &str = r#"-A FC-FWD-fc-br0 -i fc-br0 -o fc-br0 -m comment --comment "fireclaw: guests may not reach each other" -j DROP"#;

fn rules(sandbox: &Sandbox) -> String {
    sandbox.sh("iptables -S; iptables -t nat -S")
}

#[test]
#[ignore = "needs root: sandbox"]
fn rendered_units_pass_systemd_analyze_verify() {
    let sandbox = Sandbox::boot("verify");
    let a = install(&sandbox, "a");
    let out = sandbox.exec(&format!(
        "systemd-analyze verify /etc/systemd/system/{} /etc/systemd/system/{} 2>&1",
        a.vm_unit(),
        a.proxy_unit()
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("vmdemo")).collect();
    assert!(ours.is_empty(), "warnings about our units: {ours:?}");
}

#[test]
#[ignore = "needs root: sandbox"]
fn vm_unit_builds_the_network_runs_the_vmm_as_main_pid_and_answers_on_the_api() {
    let sandbox = Sandbox::boot("start");
    let a = install(&sandbox, "a");
    start(&sandbox, &a);
    let main_pid = sandbox.sh(&format!(
        "systemctl show -p MainPID --value {}",
        a.vm_unit()
    ));
    let comm = sandbox.sh(&format!(
        "cat /proc/{}/cmdline | tr '\\0' ' '",
        main_pid.trim()
    ));
    assert!(
        comm.starts_with(&format!(
            "{BIN_IN_SANDBOX}/firecracker --api-sock {}",
            a.vmm_socket()
        )),
        "main process is {comm}"
    );
    assert!(
        sandbox
            .sh("ip -br addr show fc-br0")
            .contains("172.16.0.1/24")
    );
    assert!(
        sandbox
            .sh(&format!("ip -d link show {}", a.tap))
            .contains("master fc-br0")
    );
    assert!(isolated(&sandbox, &a.tap));
    assert_eq!(sandbox.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    let rules = rules(&sandbox);
    for rule in [
        "-A INPUT -j FC-IN-fc-br0",
        "-A FORWARD -j FC-FWD-fc-br0",
        NEIGHBOUR_DROP,
        r#"-A FC-FWD-fc-br0 -i fc-br0 ! -o fc-br0 -m comment --comment "fireclaw: guest egress" -j ACCEPT"#,
        r#"-A FC-IN-fc-br0 -i fc-br0 -m comment --comment "fireclaw: guests may not connect to the host" -j REJECT --reject-with icmp-admin-prohibited"#,
        "-A POSTROUTING -j FC-NAT-fc-br0",
        r#"-A FC-NAT-fc-br0 -s 172.16.0.0/24 ! -o fc-br0 -m comment --comment "fireclaw: guest egress through NAT" -j MASQUERADE"#,
    ] {
        assert!(rules.contains(rule), "{rule} missing from\n{rules}");
    }
    let info = sandbox.sh(&format!(
        "curl -sf --unix-socket {} http://localhost/",
        a.socket()
    ));
    assert!(info.contains("\"state\":\"Running\""), "{info}");
    let console = sandbox.sh("cat /srv/firecracker/vm-demo/a/logs/console.log");
    assert!(console.contains("Linux version"), "console: {console}");
    assert!(sandbox.ok("test -f /srv/firecracker/vm-demo/a/vmm/firecracker.log"));
    assert_eq!(
        sandbox.sh(&format!("readlink {}", a.socket())).trim(),
        a.vmm_socket()
    );
    eprintln!("sandbox boot: {:.1}s", sandbox.boot_secs);
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_failing_vm_net_up_fails_the_start_at_once_without_a_restart_loop() {
    let sandbox = Sandbox::boot("netfail");
    let a = install(&sandbox, "a");
    // The tap's name is taken by something that is not a tap.
    sandbox.sh(&format!("ip link add {} type bridge", a.tap));
    let started = std::time::Instant::now();
    assert!(!sandbox.ok(&format!("systemctl start {}", a.vm_unit())));
    assert!(
        started.elapsed().as_secs() < 10,
        "start took {:?}",
        started.elapsed()
    );
    std::thread::sleep(std::time::Duration::from_secs(5));
    let state = sandbox.sh(&format!(
        "systemctl show -p ActiveState,NRestarts {}",
        a.vm_unit()
    ));
    assert!(state.contains("ActiveState=failed"), "{state}");
    assert!(state.contains("NRestarts=0"), "{state}");
    let journal = sandbox.sh(&format!("journalctl -u {} --no-pager -o cat", a.vm_unit()));
    assert!(
        journal.contains(&format!(
            "interface {} exists but is a bridge device",
            a.tap
        )),
        "{journal}"
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn vm_net_up_on_a_configured_host_changes_nothing() {
    let sandbox = Sandbox::boot("idem");
    let a = install(&sandbox, "a");
    start(&sandbox, &a);
    // Names, MACs, flags, addresses, bridge masters and isolation: what vm-net-up could change.
    let links_now = || {
        sandbox.sh(
            "ip -br link | awk '{print $1, $3, $4}'; ip -br -4 addr | awk '{print $1, $3}'; \
             bridge -d link show | grep -o '^[0-9]*: [^:]*\\|master [^ ]*\\|isolated [a-z]*'",
        )
    };
    let links = links_now();
    let before = rules(&sandbox);
    sandbox.sh(&format!(
        "STATE_ROOT=/var/lib/fireclaw FC_ROOT=/srv/firecracker/vm-demo {BIN_IN_SANDBOX}/fireclaw vm-net-up a"
    ));
    assert_eq!(rules(&sandbox), before, "rules changed");
    assert_eq!(links_now(), links);
    // The running VMM's API socket is not "stale": it survives.
    assert!(sandbox.ok(&format!(
        "curl -sf --unix-socket {} http://localhost/",
        a.socket()
    )));
}

/// ICMP, TCP and ARP from `from`'s guest side to `to`'s.
fn guest_to_guest(sandbox: &Sandbox, from: &Instance, to: &Instance) -> (bool, bool, bool) {
    let ns = from.netns();
    let _ = sandbox.exec(&format!("ip -n {ns} neigh flush all"));
    let icmp = sandbox.ok(&format!("ip netns exec {ns} ping -c 1 -W 1 {}", to.ip));
    let tcp = sandbox.ok(&format!(
        "ip netns exec {ns} timeout 3 socat -u TCP:{}:18789,connect-timeout=2 - | grep -q hello",
        to.ip
    ));
    let neigh = sandbox.sh(&format!("ip -n {ns} neigh show {}", to.ip));
    let arp = neigh.contains("lladdr");
    (icmp, tcp, arp)
}

#[test]
#[ignore = "needs root: sandbox"]
fn guests_cannot_reach_each_other_and_are_reached_by_the_host() {
    let sandbox = Sandbox::boot("isolation");
    let a = install(&sandbox, "a");
    let b = install(&sandbox, "b");
    for instance in [&a, &b] {
        serve_on_guest(&sandbox, instance);
        start(&sandbox, instance);
        assert!(isolated(&sandbox, &instance.tap));
        // The host side reaches each guest: ARP and ICMP echo from the bridge address, and TCP.
        sandbox.sh(&format!("ping -c 1 -W 2 {}", instance.ip));
        assert!(
            sandbox
                .sh(&format!("ip neigh show {}", instance.ip))
                .contains("lladdr")
        );
        let reply = sandbox.sh(&format!("timeout 5 socat -u TCP:{}:18789 -", instance.ip));
        assert_eq!(reply.trim(), format!("hello from {}", instance.id));
    }

    // Port isolation alone: iptables does not see bridged frames.
    sandbox.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=0");
    assert_eq!(guest_to_guest(&sandbox, &a, &b), (false, false, false));
    assert_eq!(guest_to_guest(&sandbox, &b, &a), (false, false, false));

    // The FORWARD rule alone: isolation switched off on purpose, br_netfilter on. ARP is layer 2,
    // which iptables never sees: only port isolation stops it.
    sandbox.sh(&format!(
        "sysctl -qw net.bridge.bridge-nf-call-iptables=1; bridge link set dev {} isolated off; bridge link set dev {} isolated off",
        a.tap, b.tap
    ));
    let (icmp, tcp, _) = guest_to_guest(&sandbox, &a, &b);
    assert_eq!((icmp, tcp), (false, false));
    let (icmp, tcp, arp) = guest_to_guest(&sandbox, &b, &a);
    assert_eq!((icmp, tcp), (false, false));
    assert!(
        arp,
        "with isolation off the guests do see each other's ARP: the check is live"
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn the_proxy_forwards_localhost_to_the_guest_as_a_dynamic_user_only_on_loopback() {
    let sandbox = Sandbox::boot("proxy");
    let a = install(&sandbox, "a");
    serve_on_guest(&sandbox, &a);
    start(&sandbox, &a);
    sandbox.sh(&format!("systemctl start {}", a.proxy_unit()));
    let reply = sandbox.sh(&format!(
        "for i in $(seq 50); do r=$(timeout 3 socat -u TCP:127.0.0.1:{} - 2>/dev/null) && [ -n \"$r\" ] && echo \"$r\" && exit 0; sleep 0.1; done; exit 1",
        a.port
    ));
    assert_eq!(reply.trim(), "hello from a");
    let pid = sandbox.sh(&format!(
        "systemctl show -p MainPID --value {}",
        a.proxy_unit()
    ));
    let uid = sandbox.sh(&format!("ps -o uid= -p {}", pid.trim()));
    assert_ne!(uid.trim(), "0", "the proxy runs as root");
    let listening = sandbox.sh(&format!("ss -Hltn 'sport = :{}'", a.port));
    assert!(
        listening.contains(&format!("127.0.0.1:{}", a.port)),
        "{listening}"
    );
    assert_eq!(listening.lines().count(), 1, "{listening}");
    assert!(!sandbox.ok(&format!(
        "timeout 3 socat -u TCP:172.16.0.1:{},connect-timeout=2 -",
        a.port
    )));
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_killed_vmm_comes_back_with_its_network_rebuilt() {
    let sandbox = Sandbox::boot("crash");
    let a = install(&sandbox, "a");
    serve_on_guest(&sandbox, &a);
    start(&sandbox, &a);
    let first = sandbox.sh(&format!(
        "systemctl show -p MainPID --value {}",
        a.vm_unit()
    ));
    sandbox.sh(&format!("kill -9 {}", first.trim()));
    sandbox.sh(&format!(
        "for i in $(seq 100); do [ \"$(systemctl show -p NRestarts --value {u})\" -ge 1 ] && \
         [ \"$(systemctl is-active {u})\" = active ] && \
         curl -sf --unix-socket {s} http://localhost/ >/dev/null && exit 0; sleep 0.1; done; exit 1",
        u = a.vm_unit(),
        s = a.socket()
    ));
    let second = sandbox.sh(&format!(
        "systemctl show -p MainPID --value {}",
        a.vm_unit()
    ));
    assert_ne!(first, second);
    assert!(isolated(&sandbox, &a.tap));
    let reply = sandbox.sh(&format!("timeout 5 socat -u TCP:{}:18789 -", a.ip));
    assert_eq!(reply.trim(), "hello from a");
}

#[test]
#[ignore = "needs root: sandbox"]
fn stop_reboot_and_power_cut_keep_their_promises() {
    let mut sandbox = Sandbox::boot("reboot");
    let a = install(&sandbox, "a");
    let b = install(&sandbox, "b");
    for instance in [&a, &b] {
        sandbox.sh(&format!(
            "systemctl enable {} {}",
            instance.vm_unit(),
            instance.proxy_unit()
        ));
        start(&sandbox, instance);
    }

    // a's guest came up (as setup's SSH wait notes it): its stop gets a clean shutdown.
    sandbox.sh(&format!(
        "echo \"$(cat /proc/sys/kernel/random/boot_id) $(systemctl show -p MainPID --value {})\" > /var/lib/fireclaw/.vm-a/guest-answered",
        a.vm_unit()
    ));
    // Stop a as `fireclaw stop` does at the unit level: stop, then disable both units.
    sandbox.sh(&format!(
        "systemctl stop {} {}",
        a.proxy_unit(),
        a.vm_unit()
    ));
    sandbox.sh(&format!(
        "systemctl disable {} {}",
        a.vm_unit(),
        a.proxy_unit()
    ));
    let calls = sandbox.sh(&format!("cat /run/fireclaw-standin/{}.calls", a.tap));
    assert!(
        calls.contains("PUT /actions {\"action_type\":\"SendCtrlAltDel\"}"),
        "{calls}"
    );
    assert!(
        !sandbox.ok(&format!("ip link show {}", a.tap)),
        "tap left behind"
    );
    assert!(
        !sandbox.ok(&format!("test -e {}", a.socket())),
        "socket left behind"
    );
    for unit in [a.vm_unit(), a.proxy_unit()] {
        assert_eq!(
            sandbox
                .sh(&format!("systemctl is-enabled {unit} || true"))
                .trim(),
            "disabled"
        );
    }

    sandbox.reboot();
    assert_eq!(
        sandbox
            .sh(&format!("systemctl is-active {} || true", a.vm_unit()))
            .trim(),
        "inactive"
    );
    sandbox.sh(&format!(
        "for i in $(seq 100); do curl -sf --unix-socket {} http://localhost/ >/dev/null && exit 0; sleep 0.1; done; exit 1",
        b.socket()
    ));
    assert!(
        isolated(&sandbox, &b.tap),
        "b's network was not rebuilt after the reboot"
    );
    assert!(rules(&sandbox).contains(NEIGHBOUR_DROP));
    eprintln!("sandbox reboot: {:.1}s", sandbox.boot_secs);

    // a is started by hand (not enabled) and running when the power goes: after boot it stays
    // down with its API socket left behind, stale. Its next start must succeed all the same.
    start(&sandbox, &a);
    sandbox.power_cut();
    assert_eq!(
        sandbox
            .sh(&format!("systemctl is-active {} || true", a.vm_unit()))
            .trim(),
        "inactive"
    );
    assert!(
        sandbox.ok(&format!("test -S {}", a.socket())),
        "no stale socket to prove anything with"
    );
    assert!(!sandbox.ok(&format!(
        "curl -sf --unix-socket {} http://localhost/",
        a.socket()
    )));
    start(&sandbox, &a);
    assert!(isolated(&sandbox, &a.tap));
    // b, enabled, came back by itself despite its own stale socket.
    sandbox.sh(&format!(
        "for i in $(seq 100); do [ \"$(systemctl is-active {})\" = active ] && curl -sf --unix-socket {} http://localhost/ >/dev/null && exit 0; sleep 0.1; done; exit 1",
        b.vm_unit(),
        b.socket()
    ));
}

#[test]
#[ignore = "needs root: sandbox"]
fn units_are_refused_for_a_firecracker_in_a_world_writable_dir_and_nothing_is_left() {
    let sandbox = Sandbox::boot("trust");
    sandbox.base_images();
    sandbox.sh(&format!(
        "mkdir -p /tmp/evil && chmod 1777 /tmp/evil && cp {BIN_IN_SANDBOX}/firecracker /tmp/evil/"
    ));
    let out = sandbox.exec(&format!(
        "{}=/tmp/evil/firecracker {BIN_IN_SANDBOX}/sandbox_install --instance a --openai-api-key k --disk-size 64M",
        fireclaw::env_vars::FIRECLAW_TEST_FIRECRACKER
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("firecracker binary /tmp/evil/firecracker is not trusted"),
        "{err}"
    );
    assert!(
        !sandbox.ok("ls /etc/systemd/system/ | grep -q vmdemo"),
        "a unit was written"
    );
    assert!(
        !sandbox.ok("test -e /var/lib/fireclaw/.vm-a"),
        "state was written"
    );
    assert!(
        !sandbox.ok("test -e /srv/firecracker/vm-demo/a"),
        "assets were written"
    );
}
