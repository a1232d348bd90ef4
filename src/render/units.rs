//! The host-side text artifacts of an instance: the VM unit (`firecracker-vmdemo-<id>.service`,
//! with the VMM as its main process and fireclaw's own helpers around it), the proxy unit
//! (`vmdemo-proxy-<id>.service`, socat as a dynamic user) and the `start-vm.sh`/`stop-vm.sh`
//! wrappers an operator can run by hand. All values are quoted for their target syntax. A
//! confined VM unit runs Firecracker as the instance's own account under systemd's sandboxing
//! and resource limits, with only fireclaw's helpers (`+`) running as root.

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::env_vars::FIRECLAW_VMM_BOOT;
use crate::instance::confinement::{KVM_GROUP, Limits};
use crate::instance::layout::GUEST_GATEWAY_PORT;
use crate::instance::suspension::VmmBoot;

/// Settings the helper commands need, pinned into the unit so that `vm-net-up` sees the same
/// `STATE_ROOT`, `FC_ROOT` and bridge as the `setup` that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedEnvironment(pub Vec<(&'static str, String)>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmUnitConfig {
    pub id: String,
    pub fireclaw: PathBuf,
    pub firecracker: PathBuf,
    pub api_sock: PathBuf,
    pub vm_config: PathBuf,
    pub console_log: PathBuf,
    /// Written by `vm-net-up` before each start: whether Firecracker boots from its config
    /// file or waits for a snapshot load (`vmm_boot_environment`).
    pub boot_env: PathBuf,
    pub environment: PinnedEnvironment,
    /// `None`: the VMM runs as root (an instance made before confinement, and not adopted).
    pub confinement: Option<UnitConfinement>,
}

/// How a confined VMM runs: as `account`, able to write only under `instance_dir` (where file
/// permissions narrow it to its disk and its own dir), within `limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitConfinement {
    pub account: String,
    pub instance_dir: PathBuf,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUnitConfig {
    pub id: String,
    pub vm_unit: String,
    pub socat: PathBuf,
    pub host_port: u16,
    pub vm_ip: Ipv4Addr,
}

/// Quotes one word of a systemd command line (`ExecStart=` and friends): `%` specifiers and
/// `$` variable expansion are escaped, and anything outside a safe set goes in double quotes.
pub fn systemd_word(value: &str) -> String {
    double_quote_unless_safe(&value.replace('%', "%%").replace('$', "$$"))
}

/// The first word of a systemd command line, with its double quotes and escapes undone (the
/// inverse of `systemd_word` for a program path).
pub fn systemd_first_word(command: &str) -> String {
    let mut chars = command.trim_start().chars();
    let mut word = String::new();
    match chars.next() {
        Some('"') => {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => word.extend(chars.next()),
                    '"' => break,
                    c => word.push(c),
                }
            }
        }
        Some(first) => {
            word.push(first);
            word.extend(chars.take_while(|c| !c.is_whitespace()));
        }
        None => {}
    }
    word.replace("%%", "%").replace("$$", "$")
}

/// Quotes an `Environment=` assignment: specifiers are expanded there, variables are not.
pub fn systemd_assignment(value: &str) -> String {
    double_quote_unless_safe(&value.replace('%', "%%"))
}

/// A setting whose value runs to the end of the line with no quote removal
/// (`StandardOutput=append:<path>`): only specifiers need escaping.
pub fn systemd_raw_value(value: &str) -> String {
    value.replace('%', "%%")
}

fn double_quote_unless_safe(escaped: &str) -> String {
    let safe = !escaped.is_empty()
        && escaped
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._:=,@+-%$".contains(c));
    if safe {
        return escaped.to_owned();
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes one word for bash (single quotes).
pub fn shell_word(value: &str) -> String {
    let safe = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._:=,@+-".contains(c));
    if safe {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

fn path_word(path: &std::path::Path) -> String {
    systemd_word(&path.to_string_lossy())
}

/// The program of a VM unit's `ExecStart=`: the Firecracker it runs.
pub fn vm_unit_program(unit_text: &str) -> Option<PathBuf> {
    unit_text
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .map(systemd_first_word)
        .filter(|program| program.starts_with('/'))
        .map(PathBuf::from)
}

pub fn vm_unit(config: &VmUnitConfig) -> String {
    let id = systemd_word(&config.id);
    let fireclaw = path_word(&config.fireclaw);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by fireclaw. Runs the Firecracker VM of instance '{}'.",
        config.id
    );
    out.push_str("[Unit]\n");
    let _ = writeln!(
        out,
        "Description=Firecracker VM ({})",
        config.id.replace('%', "%%")
    );
    out.push_str("After=network-online.target\nWants=network-online.target\n");
    // Restart=always must not spin forever on a broken host: give up after 5 starts in 60 s.
    out.push_str("StartLimitIntervalSec=60\nStartLimitBurst=5\n\n");
    out.push_str("[Service]\nType=simple\n");
    for (name, value) in &config.environment.0 {
        let _ = writeln!(
            out,
            "Environment={}",
            systemd_assignment(&format!("{name}={value}"))
        );
    }
    // `+`: fireclaw's own helpers run as root outside the sandbox; only Firecracker is confined.
    let root = if let Some(confinement) = &config.confinement {
        let account = systemd_word(&confinement.account);
        let _ = writeln!(out, "User={account}\nGroup={account}");
        let _ = writeln!(out, "SupplementaryGroups={KVM_GROUP}");
        "+"
    } else {
        ""
    };
    // Bridge, tap, isolation and rules are rebuilt before every start, so the network survives
    // host reboots and VMM crashes; a failure here fails the start job at once.
    // `--in-unit`: this start is the unit's, which can load a snapshot (`start-vm.sh` cannot).
    let _ = writeln!(
        out,
        "ExecStartPre={root}{fireclaw} vm-net-up {id} --in-unit"
    );
    // Firecracker has no flag to load a snapshot: a start that resumes one runs it without
    // `--config-file`, and `vm-resume` loads it over the API. `vm-net-up` decides which and
    // writes the variable; systemd reads the file after ExecStartPre. The config is named
    // relative to the working directory, so the variable holds no path to quote.
    let (config_dir, config_file) = config_location(&config.vm_config);
    // The value runs to the end of the line; quotes would be taken literally.
    let _ = writeln!(out, "WorkingDirectory={}", systemd_raw_value(&config_dir));
    let _ = writeln!(
        out,
        "Environment={}",
        systemd_assignment(&format!(
            "{FIRECLAW_VMM_BOOT}={}",
            boot_arguments(VmmBoot::Cold, &config_file)
        ))
    );
    let _ = writeln!(
        out,
        "EnvironmentFile=-{}",
        systemd_raw_value(&config.boot_env.to_string_lossy())
    );
    let _ = writeln!(
        out,
        "ExecStart={} --api-sock {} ${FIRECLAW_VMM_BOOT}",
        path_word(&config.firecracker),
        path_word(&config.api_sock),
    );
    // Loads a due snapshot, marks it consumed, then lets the guest run; nothing otherwise.
    let _ = writeln!(out, "ExecStartPost={root}{fireclaw} vm-resume {id}");
    let _ = writeln!(out, "ExecStop={root}{fireclaw} vm-shutdown {id}");
    // Runs after clean stops, crashes and failed starts alike.
    let _ = writeln!(out, "ExecStopPost={root}{fireclaw} vm-net-down {id}");
    let _ = writeln!(
        out,
        "StandardOutput={}",
        systemd_raw_value(&format!("append:{}", config.console_log.to_string_lossy()))
    );
    out.push_str("StandardError=journal\n");
    out.push_str("TimeoutStopSec=45\nRestart=always\nRestartSec=2\n");
    if let Some(confinement) = &config.confinement {
        vm_sandboxing(&mut out, confinement);
    }
    out.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    out
}

/// The dir and file name of the Firecracker config.
fn config_location(vm_config: &std::path::Path) -> (String, String) {
    let dir = vm_config
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = vm_config
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, file)
}

/// Firecracker's arguments after `--api-sock` for each way of booting.
fn boot_arguments(boot: VmmBoot, config_file: &str) -> String {
    match boot {
        VmmBoot::Cold => format!("--config-file {config_file}"),
        VmmBoot::Load => String::new(),
    }
}

/// The environment file `vm-net-up` writes before each start of a VM unit (`boot_env`).
pub fn vmm_boot_environment(boot: VmmBoot, vm_config: &std::path::Path) -> String {
    let (_, config_file) = config_location(vm_config);
    let how = match boot {
        VmmBoot::Cold => "boots from its config file",
        VmmBoot::Load => "waits for the snapshot load of vm-resume",
    };
    format!(
        "# Written by fireclaw vm-net-up: the VMM's next start {how}.\n{FIRECLAW_VMM_BOOT}={}\n",
        boot_arguments(boot, &config_file)
    )
}

/// What both units keep from the kernel and from other processes, in the order they list it.
const KERNEL_AND_PROCESS: [(&str, &str); 9] = [
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("ProcSubset", "pid"),
    ("RestrictNamespaces", "yes"),
];

/// The settings that confine a VMM, as `(name, value)` pairs in the order the unit lists them,
/// values unescaped: `doctor` compares an installed unit's properties with these.
pub fn vm_hardening(confinement: &UnitConfinement) -> Vec<(&'static str, String)> {
    let limits = &confinement.limits;
    let mut settings: Vec<(&'static str, String)> = [
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("PrivateTmp", "yes"),
        ("PrivateMounts", "yes"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "/dev/kvm rw"),
        ("DeviceAllow", "/dev/net/tun rw"),
        ("ProtectSystem", "strict"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    settings.push((
        "ReadWritePaths",
        confinement.instance_dir.to_string_lossy().into_owned(),
    ));
    settings.push((
        "ProtectHome",
        protect_home(&confinement.instance_dir).to_owned(),
    ));
    settings.extend(KERNEL_AND_PROCESS.map(|(k, v)| (k, v.to_owned())));
    for (name, value) in [
        // Firecracker needs only its API socket; the tap is a device, not a socket.
        ("RestrictAddressFamilies", "AF_UNIX"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("IPAddressDeny", "any"),
        ("UMask", "0077"),
        ("RemoveIPC", "yes"),
        ("KeyringMode", "private"),
    ] {
        settings.push((name, value.to_owned()));
    }
    settings.extend([
        ("MemoryMax", limits.memory_max_bytes.to_string()),
        ("TasksMax", limits.tasks_max.to_string()),
        ("LimitNOFILE", limits.open_files.to_string()),
        ("CPUWeight", limits.cpu_weight.to_string()),
        ("CPUQuota", format!("{}%", limits.cpu_quota_percent)),
    ]);
    settings
}

/// `ProtectHome=yes` hides `/home`, `/root` and `/run/user`; an `FC_ROOT` below one of them
/// must stay visible, so there they are only made read-only (`ReadWritePaths=` reopens it).
fn protect_home(instance_dir: &std::path::Path) -> &'static str {
    if ["/home", "/root", "/run/user"]
        .iter()
        .any(|hidden| instance_dir.starts_with(hidden))
    {
        "read-only"
    } else {
        "yes"
    }
}

fn vm_sandboxing(out: &mut String, confinement: &UnitConfinement) {
    // No syscall filter of systemd's: Firecracker installs its own seccomp filters (which
    // systemd 252 lists only in @known), and that nothing it calls while a guest runs falls
    // outside a filter could not be shown here (README: Security model).
    out.push_str("# The VMM's confinement (README: Security model).\n");
    for (name, value) in vm_hardening(confinement) {
        // Only paths take specifiers; `CPUQuota=` reads its `%` literally ("500%%" is invalid).
        let value = if name == "ReadWritePaths" {
            // Quoted and `%` escaped; `$` is literal here (no variables outside Exec lines).
            systemd_assignment(&value)
        } else {
            value
        };
        let _ = writeln!(out, "{name}={value}");
    }
}

/// The drop-in fireclaw adds to a VM unit made by 0.2.0 (`<unit>.d/fireclaw-egress.conf`), so
/// the guest network policy is in place before that VM starts too. 0.2.0's own start script
/// runs after it unchanged; its bridge and NAT steps are idempotent.
pub fn legacy_egress_dropin(fireclaw: &std::path::Path, environment: &PinnedEnvironment) -> String {
    let mut out = String::from(
        "# Written by fireclaw: applies the guest network policy before this VM, made by\n\
         # fireclaw 0.2.0, starts. Removed by fireclaw destroy.\n[Service]\n",
    );
    for (name, value) in &environment.0 {
        let _ = writeln!(
            out,
            "Environment={}",
            systemd_assignment(&format!("{name}={value}"))
        );
    }
    let _ = writeln!(out, "ExecStartPre={} egress apply", path_word(fireclaw));
    out
}

pub fn proxy_unit(config: &ProxyUnitConfig) -> String {
    let vm_unit = systemd_word(&config.vm_unit);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by fireclaw. Forwards 127.0.0.1:{} to the gateway of instance '{}'.",
        config.host_port, config.id
    );
    out.push_str("[Unit]\n");
    let _ = writeln!(
        out,
        "Description=Localhost proxy for VM ({})",
        config.id.replace('%', "%%")
    );
    let _ = writeln!(
        out,
        "After={vm_unit}\nRequires={vm_unit}\nPartOf={vm_unit}\n"
    );
    out.push_str("[Service]\nType=simple\nDynamicUser=yes\n");
    let _ = writeln!(
        out,
        "ExecStart={} TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork TCP:{}:{}",
        path_word(&config.socat),
        config.host_port,
        config.vm_ip,
        GUEST_GATEWAY_PORT
    );
    // socat exits 143 on SIGTERM.
    out.push_str("SuccessExitStatus=143\nRestart=always\nRestartSec=2\n");
    out.push_str("# The proxy's confinement (README: Security model).\n");
    for (name, value) in proxy_hardening(config.vm_ip) {
        let _ = writeln!(out, "{name}={value}");
    }
    let _ = writeln!(out, "\n[Install]\nWantedBy=multi-user.target {vm_unit}");
    out
}

/// The settings that confine the proxy beyond `DynamicUser=yes` (which already implies a
/// read-only system, private /tmp, no new privileges and no set-uid files): it may only speak
/// TCP over IPv4, to loopback and its VM.
pub fn proxy_hardening(vm_ip: Ipv4Addr) -> Vec<(&'static str, String)> {
    let mut settings: Vec<(&'static str, String)> = [
        ("PrivateUsers", "yes"),
        ("PrivateDevices", "yes"),
        ("PrivateIPC", "yes"),
        ("PrivateMounts", "yes"),
        ("CapabilityBoundingSet", ""),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
    ]
    .into_iter()
    .chain(KERNEL_AND_PROCESS)
    .chain([
        ("RestrictAddressFamilies", "AF_INET"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallErrorNumber", "EPERM"),
        ("IPAddressDeny", "any"),
    ])
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    settings.push(("IPAddressAllow", format!("127.0.0.0/8 {vm_ip}/32")));
    settings.extend(
        [("UMask", "0077"), ("KeyringMode", "private")]
            .into_iter()
            .map(|(k, v)| (k, v.to_owned())),
    );
    settings
}

fn script_preamble(out: &mut String, purpose: &str, config: &VmUnitConfig) {
    out.push_str("#!/usr/bin/env bash\n");
    let _ = writeln!(out, "# Written by fireclaw. {purpose}");
    let _ = writeln!(
        out,
        "# The systemd unit firecracker-vmdemo-{}.service does the same; prefer systemctl.",
        config.id
    );
    out.push_str("set -euo pipefail\n");
    for (name, value) in &config.environment.0 {
        let _ = writeln!(out, "export {name}={}", shell_word(value));
    }
}

/// Runs the VM in the foreground, as the unit's ExecStartPre and ExecStart do.
pub fn start_script(config: &VmUnitConfig) -> String {
    let mut out = String::new();
    script_preamble(&mut out, "Runs the VM in the foreground.", config);
    let fireclaw = shell_word(&config.fireclaw.to_string_lossy());
    let _ = writeln!(out, "{fireclaw} vm-net-up {}", shell_word(&config.id));
    // As the unit does: Firecracker as the instance's account, without capabilities.
    let drop_to = match &config.confinement {
        Some(confinement) => {
            let account = shell_word(&confinement.account);
            out.push_str("umask 077\n");
            format!(
                "setpriv --reuid={account} --regid={account} --groups={KVM_GROUP} --no-new-privs --inh-caps=-all --bounding-set=-all -- "
            )
        }
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "exec {drop_to}{} --api-sock {} --config-file {}",
        shell_word(&config.firecracker.to_string_lossy()),
        shell_word(&config.api_sock.to_string_lossy()),
        shell_word(&config.vm_config.to_string_lossy())
    );
    out
}

/// Shuts the guest down cleanly, then removes the tap and socket, as ExecStop/ExecStopPost do.
pub fn stop_script(config: &VmUnitConfig) -> String {
    let mut out = String::new();
    script_preamble(
        &mut out,
        "Shuts the VM down cleanly and removes its tap.",
        config,
    );
    let fireclaw = shell_word(&config.fireclaw.to_string_lossy());
    let id = shell_word(&config.id);
    out.push_str("status=0\n");
    let _ = writeln!(out, "{fireclaw} vm-shutdown {id} || status=$?");
    let _ = writeln!(out, "{fireclaw} vm-net-down {id}");
    out.push_str("exit \"$status\"\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(fc_root: &str) -> VmUnitConfig {
        let dir = PathBuf::from(fc_root).join("my-bot");
        VmUnitConfig {
            id: "my-bot".into(),
            fireclaw: "/usr/local/bin/fireclaw".into(),
            firecracker: "/usr/local/bin/firecracker".into(),
            api_sock: dir.join("firecracker.socket"),
            vm_config: dir.join("config/vm-config.json"),
            console_log: dir.join("logs/console.log"),
            boot_env: "/var/lib/fireclaw/.vm-my-bot/vmm-boot.env".into(),
            environment: PinnedEnvironment(vec![
                ("STATE_ROOT", "/var/lib/fireclaw".into()),
                ("FC_ROOT", fc_root.into()),
                ("BRIDGE_NAME", "fc-br0".into()),
                ("BRIDGE_ADDR", "172.16.0.1/24".into()),
                ("SUBNET_CIDR", "172.16.0.0/24".into()),
            ]),
            confinement: Some(UnitConfinement {
                account: "fcvm-my-bot".into(),
                instance_dir: dir.clone(),
                limits: crate::instance::confinement::limits(2, 1024),
            }),
        }
    }

    fn unconfined(fc_root: &str) -> VmUnitConfig {
        VmUnitConfig {
            confinement: None,
            ..vm(fc_root)
        }
    }

    #[test]
    fn an_unconfined_vm_unit_runs_everything_as_root_as_before() {
        let unit = vm_unit(&unconfined("/srv/firecracker/vm-demo"));
        assert!(!unit.contains("User="), "{unit}");
        assert!(
            unit.contains("\nExecStartPre=/usr/local/bin/fireclaw vm-net-up my-bot --in-unit\n")
        );
        assert!(!unit.contains("ProtectSystem"), "{unit}");
        let script = start_script(&unconfined("/srv/firecracker/vm-demo"));
        assert!(!script.contains("setpriv"), "{script}");
    }

    #[test]
    fn the_firecracker_of_a_unit_is_read_back_from_its_exec_start() {
        let mut config = vm("/srv/my vms");
        config.firecracker = "/opt/fire cracker/100%/firecracker".into();
        assert_eq!(
            vm_unit_program(&vm_unit(&config)),
            Some(PathBuf::from("/opt/fire cracker/100%/firecracker"))
        );
        assert_eq!(vm_unit_program("[Service]\nExecStart=firecracker\n"), None);
    }

    #[test]
    fn fc_root_under_home_stays_visible_to_the_vmm() {
        let unit = vm_unit(&vm("/home/ops/vms"));
        assert!(unit.contains("\nProtectHome=read-only\n"), "{unit}");
        assert!(
            unit.contains("\nReadWritePaths=/home/ops/vms/my-bot\n"),
            "{unit}"
        );
        assert!(vm_unit(&vm("/srv/vms")).contains("\nProtectHome=yes\n"));
    }

    #[test]
    fn legacy_egress_dropin_snapshot() {
        let config = vm("/srv/firecracker/vm-demo");
        insta::assert_snapshot!(legacy_egress_dropin(&config.fireclaw, &config.environment));
    }

    #[test]
    fn vm_unit_snapshot() {
        insta::assert_snapshot!(vm_unit(&vm("/srv/firecracker/vm-demo")));
    }

    #[test]
    fn vm_unit_quotes_awkward_paths() {
        insta::assert_snapshot!(vm_unit(&vm("/srv/my vms/100%/$x")));
    }

    #[test]
    fn proxy_unit_snapshot() {
        insta::assert_snapshot!(proxy_unit(&ProxyUnitConfig {
            id: "my-bot".into(),
            vm_unit: "firecracker-vmdemo-my-bot.service".into(),
            socat: "/usr/bin/socat".into(),
            host_port: 18891,
            vm_ip: Ipv4Addr::new(172, 16, 0, 2),
        }));
    }

    #[test]
    fn start_script_snapshot() {
        insta::assert_snapshot!(start_script(&vm("/srv/firecracker/vm-demo")));
    }

    #[test]
    fn stop_script_snapshot() {
        insta::assert_snapshot!(stop_script(&vm("/srv/my vms/it's")));
    }

    #[test]
    fn words_are_quoted_for_their_syntax() {
        assert_eq!(systemd_word("/usr/bin/socat"), "/usr/bin/socat");
        assert_eq!(systemd_word("a b"), "\"a b\"");
        assert_eq!(systemd_word("50%"), "50%%");
        assert_eq!(systemd_word("$HOME"), "$$HOME");
        assert_eq!(systemd_word("a\"b\\"), "\"a\\\"b\\\\\"");
        assert_eq!(systemd_assignment("A=$x y"), "\"A=$x y\"");
        assert_eq!(systemd_raw_value("append:/a b/50%"), "append:/a b/50%%");
        assert_eq!(shell_word("plain-1"), "plain-1");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
