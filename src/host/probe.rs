//! Read-only facts about the host: whether we are root, which TCP ports something listens on,
//! where a program is on `PATH`, and how much memory is available. Parsing is split from
//! reading so it can be tested on fixed text.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// This host's name (for a person, in an archive's manifest); "unknown" when it has none.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A command that needs root was run without it.
#[derive(Debug, thiserror::Error)]
#[error("'fireclaw {command}' needs root: {why}")]
pub struct NeedsRoot {
    pub command: &'static str,
    pub why: &'static str,
}

/// Whether any cause in `error`'s chain is a refusal to read or write something (permission
/// denied): what a user without root meets.
pub fn refused_access(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

/// Refuses to go on without root, saying which command needs it and why.
pub fn require_root(command: &'static str, why: &'static str) -> Result<(), NeedsRoot> {
    if is_root() {
        Ok(())
    } else {
        Err(NeedsRoot { command, why })
    }
}

/// Ports in LISTEN state in a `/proc/net/tcp` or `/proc/net/tcp6` table.
pub fn parse_listening_ports(table: &str) -> BTreeSet<u16> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != LISTEN {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// Every TCP port something on the host listens on, IPv4 and IPv6. Unreadable tables (no
/// IPv6, say) count as empty.
pub fn listening_tcp_ports() -> BTreeSet<u16> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| parse_listening_ports(&table))
        .collect()
}

/// The first executable named `program` on `path_var` (a `PATH` value).
pub fn find_on_path(program: &str, path_var: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path_var?
        .split(':')
        .filter(|dir| Path::new(dir).is_absolute())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `program` on this process's `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    find_on_path(
        program,
        std::env::var(crate::env_vars::PATH).ok().as_deref(),
    )
}

/// `MemAvailable` from `/proc/meminfo`, in MiB.
pub fn parse_mem_available_mib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib / 1024)
    })
}

pub fn mem_available_mib() -> Option<u64> {
    parse_mem_available_mib(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// This host boot's id (`/proc/sys/kernel/random/boot_id`); empty when it cannot be read.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_are_read_from_proc_tables() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4A3B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:9C40 0100007F:4A3B 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(parse_listening_ports(table), BTreeSet::from([0x4A3B, 22]));
        let v6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1
";
        assert_eq!(parse_listening_ports(v6), BTreeSet::from([8080]));
    }

    #[test]
    fn path_lookup_finds_executables_only() {
        let found = find_on_path("sh", Some("relative/dir:/nonexistent:/bin:/usr/bin")).unwrap();
        assert!(found.ends_with("sh"));
        assert_eq!(find_on_path("sh", Some("relative")), None);
        assert_eq!(find_on_path("passwd", Some("/etc")), None, "not executable");
        assert_eq!(find_on_path("sh", None), None);
    }

    #[test]
    fn mem_available_is_parsed_in_mib() {
        let meminfo = "MemTotal:       24000000 kB\nMemAvailable:    2097152 kB\n";
        assert_eq!(parse_mem_available_mib(meminfo), Some(2048));
        assert_eq!(parse_mem_available_mib("MemTotal: 1 kB\n"), None);
    }
}
