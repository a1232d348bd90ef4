//! Benchmark (not run by CI; its command is in the README): how long an instance takes to be
//! healthy again after `resume` against after a cold `start`, in the sandbox (a guest stand-in
//! whose "boot" is a container start plus cloud-init's stages, so the cold figure here is far
//! below a real VM's tens of seconds; what it shows is fireclaw's own share of each path).
//! Also the time `suspend` takes. Root, in a sandbox:
//!
//! ```sh
//! cargo nextest run --run-ignored all -E 'binary(bench_suspend)' --no-capture
//! ```
//!
//! Each figure is the best of `BENCH_RUNS` (default 3). Snapshot write and load times and file
//! sizes with a real Firecracker are printed by the opt-in `real_firecracker` test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use support::fleet::Fleet;

const WAITS: &str = "--ssh-timeout 60 --health-timeout 30";

fn seconds(fleet: &Fleet, args: &str) -> f64 {
    let started = Instant::now();
    let said = fleet.fireclaw_ok(args);
    let elapsed = started.elapsed().as_secs_f64();
    if !args.starts_with("stop") && !args.starts_with("suspend") {
        assert!(said.contains("is healthy."), "{args}: {said}");
    }
    elapsed
}

#[test]
#[ignore = "needs root: sandbox"]
fn resume_to_healthy_against_cold_start_to_healthy() {
    let runs: u32 = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let fleet = Fleet::new("benchsuspend");
    fleet.healthy("a");
    let (mut cold, mut resume, mut suspend) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..runs {
        seconds(&fleet, "stop a");
        cold = cold.min(seconds(&fleet, &format!("start a {WAITS}")));
        suspend = suspend.min(seconds(&fleet, "suspend a"));
        resume = resume.min(seconds(&fleet, &format!("resume a {WAITS}")));
    }
    eprintln!(
        "best of {runs}: cold start to healthy {cold:.2}s, resume to healthy {resume:.2}s, suspend {suspend:.2}s"
    );
}
