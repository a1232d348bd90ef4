//! Benchmark (not run by CI; its command is in the README): on the real guest (Debian 13 under
//! QEMU's TCG) with the real OpenClaw, `start` to healthy from stopped against `resume` to
//! healthy from suspended, each the best of two, and the suspend's own time. Under emulation a
//! resume is QEMU's migration load behind the Firecracker stand-in, not Firecracker's snapshot
//! load. Root, after `sudo scripts/test` has filled the cache:
//!
//! ```sh
//! sudo cargo nextest run --run-ignored all -E 'binary(bench_real_guest)' --no-capture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use support::real_guest::{OPENAI_KEY, RealGuestHost, RealOpenClaw};

const WAITS: &str = "--ssh-timeout 600 --health-timeout 1500";

fn timed(fleet: &RealGuestHost, args: &str) -> f64 {
    let started = Instant::now();
    let out = fleet.fireclaw_ok(args);
    assert!(
        out.contains("healthy") || out.contains("suspended"),
        "{out}"
    );
    started.elapsed().as_secs_f64()
}

#[test]
#[ignore = "needs root: sandbox"]
fn start_from_stopped_against_resume_from_suspended_with_the_real_openclaw() {
    let fleet = RealGuestHost::boot("benchrealguest");
    let openclaw = RealOpenClaw::cached();
    let parts = &fleet.parts;
    fleet.fireclaw_ok(&format!(
        "setup --instance oc --base-kernel {} --base-initrd {} --base-rootfs {} \
         --openai-api-key {OPENAI_KEY} --openclaw-image {} --openclaw-pull missing \
         --vm-vcpu 2 --vm-mem-mib 2048 --disk-size 6G --skip-browser-install {WAITS}",
        parts.kernel.display(),
        parts.initrd.display(),
        openclaw.rootfs.display(),
        openclaw.image,
    ));
    let mut starts = Vec::new();
    let mut resumes = Vec::new();
    let mut suspends = Vec::new();
    for _ in 0..2 {
        fleet.fireclaw_ok("stop oc");
        starts.push(timed(&fleet, &format!("start oc {WAITS}")));
        suspends.push(timed(&fleet, "suspend oc"));
        resumes.push(timed(&fleet, &format!("resume oc {WAITS}")));
    }
    let best = |times: &[f64]| times.iter().copied().fold(f64::INFINITY, f64::min);
    let (start, resume, suspend) = (best(&starts), best(&resumes), best(&suspends));
    eprintln!(
        "bench_real_guest (TCG, 2 vCPUs, 2 GiB, the real OpenClaw): start to healthy {start:.1} s, \
         resume to healthy {resume:.1} s (QEMU's migration load, not Firecracker's), ratio {:.1}; \
         suspend {suspend:.1} s",
        start / resume
    );
    fleet.fireclaw_ok("destroy oc -y");
}
