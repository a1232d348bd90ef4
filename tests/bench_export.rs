//! Benchmark (not run by CI; its command is in the README): `export` and `import` of an 8 GiB
//! disk holding about 1.5 GiB (half random, half system files: some compressible), against
//! `tar --sparse -c | zstd -3 -T0` of the same disk, unencrypted, on every core; then the
//! `--pause` window of a running instance on the sandbox's own filesystem (an overlay: no
//! reflinks, the disk is copied while paused) and on XFS in a loop file (a reflink). Root, in
//! sandboxes, with xfsprogs installed (`apt-get install xfsprogs`):
//!
//! ```sh
//! cargo nextest run --run-ignored all -E 'binary(bench_export)' --no-capture
//! ```
//!
//! `BENCH_DATA_MIB` changes the data's size (default 1536).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Instant;

use support::fleet::Fleet;

const KEY: &str = "sk-openai-bench-export";
const WAITS: &str = "--ssh-timeout 60 --health-timeout 30";

fn data_mib() -> u64 {
    std::env::var("BENCH_DATA_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1536)
}

/// An 8 GiB instance, stopped, with `data_mib` of data written into its disk.
fn filled(fleet: &Fleet, id: &str) {
    fleet.fireclaw_ok(&format!(
        "setup --instance {id} --skip-browser-install --disk-size 8G {WAITS} --openai-api-key {KEY}"
    ));
    fleet.fireclaw_ok(&format!("stop {id}"));
    let half = data_mib() / 2;
    // The filesystem grows to the 8G file first (a real guest's cloud-init does that at boot;
    // a container guest does not), or the data would not fit.
    fleet.host.sh(&format!(
        "e2fsck -fy /srv/firecracker/vm-demo/{id}/images/rootfs.ext4 >/dev/null 2>&1; \
         resize2fs /srv/firecracker/vm-demo/{id}/images/rootfs.ext4 >/dev/null 2>&1 && \
         {{ head -c {half}M /dev/urandom; for _ in 1 2 3 4 5 6 7 8; do tar -c /usr/lib /usr/share 2>/dev/null; done; }} \
           | head -c {}M > /root/data && \
         debugfs -w -R 'write /root/data /agent-data' /srv/firecracker/vm-demo/{id}/images/rootfs.ext4 >/dev/null 2>&1 && \
         rm /root/data",
        data_mib()
    ));
}

fn timed(fleet: &Fleet, script: &str) -> f64 {
    let began = Instant::now();
    let out = fleet.host.exec(script);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    began.elapsed().as_secs_f64()
}

fn size(fleet: &Fleet, path: &str) -> u64 {
    fleet
        .host
        .sh(&format!("stat -c %s {path}"))
        .trim()
        .parse()
        .unwrap()
}

fn pause_ms(fleet: &Fleet, id: &str, to: &str) -> (u64, bool) {
    let out = fleet.fireclaw_ok(&format!("export {id} --pause -q --json -o {to}"));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        json["pause_ms"].as_u64().unwrap(),
        json["reflinked"].as_bool().unwrap(),
    )
}

#[test]
#[ignore = "needs root: sandbox"]
fn export_and_import_of_an_8_gib_disk_against_tar_and_zstd_and_the_pause_window() {
    let fleet = Fleet::new("benchexport");
    filled(&fleet, "a");
    let bin = support::sandbox::BIN_IN_SANDBOX;
    let export = timed(
        &fleet,
        &format!("PATH={bin}:$PATH fireclaw export a -q -o /root/a.fireclaw 2>/dev/null"),
    );
    let archive = size(&fleet, "/root/a.fireclaw");
    let baseline = timed(
        &fleet,
        "cd /srv/firecracker/vm-demo/a/images && tar --sparse -c -f - rootfs.ext4 | zstd -3 -T0 -q -c > /root/a.tar.zst",
    );
    let baseline_size = size(&fleet, "/root/a.tar.zst");
    fleet.fireclaw_ok("destroy a -y");
    let import = timed(
        &fleet,
        &format!("PATH={bin}:$PATH fireclaw import -q /root/a.fireclaw"),
    );
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "8 GiB disk, {} MiB of data: export {export:.1} s, archive {:.0} MiB; tar --sparse | zstd -3 -T0 {baseline:.1} s, {:.0} MiB ({:+.1}% size, {:.2}x time); import {import:.1} s",
        data_mib(),
        mib(archive),
        mib(baseline_size),
        (archive as f64 / baseline_size as f64 - 1.0) * 100.0,
        export / baseline
    );
    // An imported container guest has none of what provisioning put in the source's guest
    // (it is not on the disk), so it is provisioned rather than started.
    fleet.fireclaw_ok(&format!("provision a {WAITS}"));
    let (copied, reflinked) = pause_ms(&fleet, "a", "/root/p.fireclaw");
    assert!(!reflinked);
    drop(fleet);

    // The same on XFS, whose reflinks end the pause at once.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = dir.path().join("xfs.img");
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let sh = |script: &str| {
        let status = Command::new("sh").args(["-c", script]).status().unwrap();
        assert!(status.success(), "{script} (is xfsprogs installed?)");
    };
    sh(&format!(
        "truncate -s 24G {img} && mkfs.xfs -q -m reflink=1 {img} && mount -o loop {img} {mnt}",
        img = image.display(),
        mnt = mount.display()
    ));
    let unmount = Unmount(mount.clone());
    let fleet = Fleet::with_binds(
        "benchexportxfs",
        vec![format!(
            "--bind={}:/srv/firecracker/vm-demo",
            mount.display()
        )],
    );
    filled(&fleet, "b");
    fleet.fireclaw_ok(&format!("start b {WAITS}"));
    let (cloned, reflinked) = pause_ms(&fleet, "b", "/root/b.fireclaw");
    assert!(reflinked);
    fleet.fireclaw_ok("destroy b -y");
    drop(fleet);
    drop(unmount);
    eprintln!(
        "--pause window with {} MiB of data: {copied} ms copying (no reflinks), {cloned} ms with a reflink (XFS)",
        data_mib()
    );
}

/// Unmounts the loop filesystem when dropped, whatever happened.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
