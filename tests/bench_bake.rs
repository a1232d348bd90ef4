//! Benchmark (not run by CI; its command is in the README): `setup` to healthy on a plain base
//! against on a baked one, in the real guest (Debian 13 under QEMU's TCG, 1 vCPU; see
//! `sandbox_real_guest.rs`). Root, after `sudo scripts/test` has filled the cache:
//!
//! ```sh
//! sudo cargo nextest run --run-ignored all -E 'binary(bench_bake)' --no-capture
//! ```
//!
//! No registry can be reached from these guests (guest egress to the host is blocked, and no
//! other network is there), so on the plain base the image comes the archive path: setup is
//! stopped after its first SSH answer, the test image's docker-archive is streamed into the
//! guest's `docker load` over fireclaw's pinned SSH, and `provision` finishes the instance; the
//! whole is timed as one setup. On the baked base, `setup --base-image` alone. The bake's own
//! time is printed too. The test disk already has Docker (no apt on either path here, where no
//! mirror can be reached either), so the saving shown is the image's delivery and load only;
//! on Ubuntu's cloud image the plain path adds Docker's apt install and a pull of about a
//! gigabyte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use support::real_guest::{OPENAI_KEY, RealGuestHost};
use support::sandbox::BIN_IN_SANDBOX;

const WAITS: &str = "--ssh-timeout 400 --health-timeout 300";

#[test]
#[ignore = "needs root: sandbox"]
fn setup_to_healthy_on_a_plain_base_against_a_baked_one() {
    let fleet = RealGuestHost::boot("benchbake");
    let parts = &fleet.parts;
    let common = format!(
        "--base-kernel {} --base-initrd {} --openai-api-key {OPENAI_KEY} --vm-vcpu 1 --vm-mem-mib 1024 --disk-size 3G --skip-browser-install {WAITS}",
        parts.kernel.display(),
        parts.initrd.display()
    );

    // Plain base: the image through the archive path, then provision.
    let started = Instant::now();
    let crashed = fleet.host.exec(&format!(
        "export PATH={BIN_IN_SANDBOX}:$PATH FIRECLAW_TEST_CRASH_AT=setup:booted; fireclaw setup --instance plain --base-rootfs {} --openclaw-image fireclaw.test/bench:1 {common}; echo rc=$?",
        parts.rootfs.display()
    ));
    assert!(
        String::from_utf8_lossy(&crashed.stdout)
            .trim_end()
            .ends_with("rc=137")
    );
    fleet.host.sh(&format!(
        "export PATH={BIN_IN_SANDBOX}:$PATH; fireclaw shell plain 'sudo docker load && sudo docker tag {} fireclaw.test/bench:1' < {}",
        parts.image,
        parts.archive.display()
    ));
    let out = fleet.fireclaw_ok(&format!("provision plain --openclaw-pull missing {WAITS}"));
    assert!(out.contains("Instance plain is healthy."), "{out}");
    let plain = started.elapsed().as_secs_f64();
    fleet.fireclaw_ok("destroy plain -y");

    // Baked base.
    let started = Instant::now();
    fleet.fireclaw_ok(&format!(
        "image bake --name bench --from {} --kernel {} --initrd {} --openclaw-image fireclaw.test/bench:1 --openclaw-image-archive {} --skip-browser-install --vm-vcpu 1 --vm-mem-mib 1024 --ssh-timeout 400",
        parts.rootfs.display(),
        parts.kernel.display(),
        parts.initrd.display(),
        parts.archive.display()
    ));
    let bake = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let out = fleet.fireclaw_ok(&format!(
        "setup --instance baked --base-image bench {common}"
    ));
    assert!(out.contains("Instance baked is healthy."), "{out}");
    let baked = started.elapsed().as_secs_f64();
    fleet.fireclaw_ok("destroy baked -y");

    eprintln!(
        "setup to healthy: plain base {plain:.1} s, baked base {baked:.1} s, ratio {:.2} (the bake itself: {bake:.1} s)",
        plain / baked
    );
}
