//! Opt-in: the VM unit with a real Firecracker instead of the stand-in. CI does not run this
//! target (no Firecracker can be installed from the registries there), and on machines whose
//! nested virtualisation stops a guest kernel it cannot pass. Run it as root with:
//!
//! ```sh
//! FIRECLAW_TEST_FIRECRACKER=/usr/local/bin/firecracker \
//! FIRECLAW_TEST_KERNEL=/srv/firecracker/base/images/vmlinux \
//! FIRECLAW_TEST_ROOTFS=/srv/firecracker/base/images/rootfs.ext4 \
//! cargo nextest run --run-ignored all -E 'binary(real_firecracker)'
//! ```
//!
//! It shows the API answering through the socket with Firecracker confined (as the instance's
//! account, no capabilities, `NoNewPrivs`), and a clean stop: the guest goes down on
//! Ctrl-Alt-Del within the stop timeout, and the tap and socket are removed. It also prints
//! the VMM's memory beyond its guest's (its RSS less the guest memory it has touched, read from
//! `/proc/<pid>/smaps_rollup` and the guest memory mapping), the measurement behind
//! `VMM_OVERHEAD_MIB` in `src/instance/confinement.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use fireclaw::env_vars;
use support::sandbox::{BIN_IN_SANDBOX, Sandbox};

fn required(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: this opt-in test needs a real Firecracker, kernel and rootfs")
    }))
}

fn copy_into(sandbox: &Sandbox, from: &PathBuf, inside: &str, mode: u32) {
    let target = sandbox.root().join(inside.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(from, &target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A sandbox with the real Firecracker (at `firecracker_at`), kernel and base rootfs in place,
/// and the disk size in MiB an instance needs for that rootfs.
fn with_real_parts(tag: &str, firecracker_at: &str) -> (Sandbox, u64) {
    let firecracker = required(env_vars::FIRECLAW_TEST_FIRECRACKER);
    let kernel = required(env_vars::FIRECLAW_TEST_KERNEL);
    let rootfs = required(env_vars::FIRECLAW_TEST_ROOTFS);
    let sandbox = Sandbox::boot(tag);
    copy_into(&sandbox, &firecracker, firecracker_at, 0o755);
    copy_into(
        &sandbox,
        &kernel,
        "/srv/firecracker/base/images/vmlinux",
        0o644,
    );
    copy_into(
        &sandbox,
        &rootfs,
        "/srv/firecracker/base/images/rootfs.ext4",
        0o644,
    );
    let size = std::fs::metadata(&rootfs).unwrap().len().div_ceil(1 << 20) + 64;
    (sandbox, size)
}

#[test]
#[ignore = "needs root: sandbox"]
fn vm_unit_runs_a_real_firecracker_and_stops_it_cleanly() {
    let (sandbox, size) = with_real_parts("realfc", "/usr/local/lib/fireclaw-test/firecracker");
    sandbox.sh(&format!(
        "{}=/usr/local/lib/fireclaw-test/firecracker \
         {BIN_IN_SANDBOX}/sandbox_install --instance real --openai-api-key k --disk-size {size}M \
         --vm-mem-mib 512 --vm-vcpu 1",
        env_vars::FIRECLAW_TEST_FIRECRACKER
    ));
    let socket = "/srv/firecracker/vm-demo/real/firecracker.socket";
    sandbox.sh("systemctl start firecracker-vmdemo-real.service");
    let info = sandbox.sh(&format!(
        "for i in $(seq 100); do curl -sf --unix-socket {socket} http://localhost/ && exit 0; sleep 0.1; done; exit 1"
    ));
    assert!(info.contains("\"state\":\"Running\""), "{info}");
    let pid = sandbox
        .sh("systemctl show -p MainPID --value firecracker-vmdemo-real.service")
        .trim()
        .to_owned();
    let status = sandbox.sh(&format!("cat /proc/{pid}/status"));
    assert!(status.contains("\nNoNewPrivs:\t1\n"), "{status}");
    assert!(status.contains("\nCapEff:\t0000000000000000\n"), "{status}");
    assert_eq!(
        sandbox.sh(&format!("ps -o user= -p {pid}")).trim(),
        "fcvm-real"
    );
    // The guest's memory is one anonymous mapping of exactly its size (512 MiB here); all
    // other resident memory is the VMM's own.
    let rss_kib = sandbox.sh(&format!(
        "awk '/^Rss:/ {{print $2}}' /proc/{pid}/smaps_rollup"
    ));
    let guest_kib = sandbox.sh(&format!(
        "awk '/^[0-9a-f]+-[0-9a-f]+ / {{ split($1, r, \"-\"); size = strtonum(\"0x\" r[2]) - strtonum(\"0x\" r[1]) }} \
         /^Rss:/ {{ if (size == 512 * 1048576) print $2 }}' /proc/{pid}/smaps"
    ));
    eprintln!(
        "VMM memory: RSS {} KiB, of it guest memory {} KiB",
        rss_kib.trim(),
        guest_kib.trim()
    );
    let own_kib =
        rss_kib.trim().parse::<u64>().unwrap() - guest_kib.trim().parse::<u64>().unwrap_or(0);
    // What MemoryMax= allows beyond the guest for the VMM itself and the helpers beside it.
    assert!(
        own_kib < fireclaw::instance::confinement::VMM_OVERHEAD_MIB * 1024,
        "the VMM's own {own_kib} KiB exceed VMM_OVERHEAD_MIB"
    );
    let started = std::time::Instant::now();
    sandbox.sh("systemctl stop firecracker-vmdemo-real.service");
    let journal = sandbox.sh("journalctl -u firecracker-vmdemo-real.service --no-pager -o cat");
    assert!(!journal.contains("did not shut down"), "{journal}");
    assert!(!journal.contains("Killing process"), "{journal}");
    assert!(!sandbox.ok(&format!("test -e {socket}")));
    assert!(!sandbox.ok("ip link show treal2"));
    eprintln!("clean stop took {:.1}s", started.elapsed().as_secs_f64());
}

/// Suspend and resume against the real VMM, for a 256 MiB and a 1 GiB guest: the API's state
/// is `Paused` while the snapshot is written and `Running` after the VM unit's `vm-resume`
/// loaded it; both files are the VMM's own, the memory file as big as the guest; Firecracker's
/// `--describe-snapshot` agrees with what was recorded. Prints, as the benchmark the README
/// names, the time `fireclaw suspend` took up to its record (pause, write, flushes) and then for
/// the stop, the time from the unit's start to a running VM after a load, and each memory
/// file's apparent and allocated size. Without SSH into the
/// guest (no guest key is installed here), the guest flush before the pause is only warned of.
#[test]
#[ignore = "needs root: sandbox"]
fn suspend_and_resume_against_the_real_vmm() {
    let (sandbox, size) = with_real_parts("realsnap", "/usr/local/bin/firecracker");
    for memory_mib in [256u64, 1024] {
        let id = format!("snap{memory_mib}");
        let unit = format!("firecracker-vmdemo-{id}.service");
        sandbox.sh(&format!(
            "{BIN_IN_SANDBOX}/sandbox_install --instance {id} --openai-api-key k --disk-size {size}M \
             --vm-mem-mib {memory_mib} --vm-vcpu 1 && \
             cd /var/lib/fireclaw/.vm-{id} && jq '.phase = \"provisioned\"' fireclaw.json > j && mv j fireclaw.json"
        ));
        let socket = format!("/srv/firecracker/vm-demo/{id}/firecracker.socket");
        let state = |sandbox: &Sandbox| {
            sandbox.sh(&format!(
                "curl -sf --unix-socket {socket} http://localhost/ || true"
            ))
        };
        sandbox.sh(&format!("systemctl start {unit}"));
        sandbox.sh(&format!(
            "for i in $(seq 100); do curl -sf --unix-socket {socket} http://localhost/ && exit 0; sleep 0.1; done; exit 1"
        ));
        // Let the guest boot far enough to have touched its memory.
        std::thread::sleep(std::time::Duration::from_secs(10));
        assert!(state(&sandbox).contains("\"state\":\"Running\""));

        // Cut short right after its record: the VM is seen paused, its snapshot written.
        let started = std::time::Instant::now();
        let cut = sandbox.exec(&format!(
            "export PATH={BIN_IN_SANDBOX}:$PATH; FIRECLAW_TEST_CRASH_AT=suspend:recorded fireclaw suspend {id}"
        ));
        assert_eq!(cut.status.code(), None, "not killed at suspend:recorded");
        let write_secs = started.elapsed().as_secs_f64();
        assert!(
            state(&sandbox).contains("\"state\":\"Paused\""),
            "{}",
            state(&sandbox)
        );
        let started = std::time::Instant::now();
        let suspended = sandbox.exec(&format!(
            "export PATH={BIN_IN_SANDBOX}:$PATH; fireclaw suspend {id}"
        ));
        let suspend_secs = started.elapsed().as_secs_f64();
        assert!(
            suspended.status.success(),
            "{}",
            String::from_utf8_lossy(&suspended.stderr)
        );
        let files = sandbox.sh(&format!(
            "cd /srv/firecracker/vm-demo/{id}/vmm && stat -c '%n %a %U %s %b %B' snapshot.mem snapshot.vmstate"
        ));
        let memory_line = files.lines().next().unwrap().to_owned();
        let fields: Vec<&str> = memory_line.split_whitespace().collect();
        assert_eq!(
            fields[..4],
            [
                "snapshot.mem",
                "600",
                &format!("fcvm-{id}")[..],
                &(memory_mib << 20).to_string()[..]
            ],
            "{files}"
        );
        let allocated = fields[4].parse::<u64>().unwrap() * fields[5].parse::<u64>().unwrap();
        let described = sandbox.sh(&format!(
            "firecracker --describe-snapshot /srv/firecracker/vm-demo/{id}/vmm/snapshot.vmstate"
        ));
        let record: serde_json::Value = serde_json::from_str(
            &sandbox.sh(&format!("cat /var/lib/fireclaw/.vm-{id}/fireclaw.json")),
        )
        .unwrap();
        assert_eq!(record["suspended"]["format_version"], described.trim());
        assert!(
            sandbox
                .sh(&format!("systemctl is-active {unit} || true"))
                .contains("inactive")
        );

        let started = std::time::Instant::now();
        sandbox.sh(&format!("systemctl start {unit}"));
        let load_secs = started.elapsed().as_secs_f64();
        assert!(
            state(&sandbox).contains("\"state\":\"Running\""),
            "{}",
            state(&sandbox)
        );
        let record: serde_json::Value = serde_json::from_str(
            &sandbox.sh(&format!("cat /var/lib/fireclaw/.vm-{id}/fireclaw.json")),
        )
        .unwrap();
        assert!(record.get("suspended").is_none(), "{record}");
        assert!(!sandbox.ok(&format!(
            "test -e /srv/firecracker/vm-demo/{id}/vmm/snapshot.mem"
        )));
        eprintln!(
            "{memory_mib} MiB guest: suspend up to its record {write_secs:.2}s (including a guest flush that cannot reach the guest), then the stop {suspend_secs:.2}s; start with load {load_secs:.2}s; memory file {} MiB apparent, {} MiB allocated",
            memory_mib,
            allocated >> 20
        );
        sandbox.sh(&format!("systemctl stop {unit}"));
    }
}
