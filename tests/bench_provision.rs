//! Benchmark (not run by CI; its command is in the README): provisioning with the real
//! OpenClaw, the one-patch path against the per-key path it replaced, forced in the guest
//! (`/etc/fireclaw/openclaw-config-path`), one run each, in the container guest (where the
//! per-key path takes minutes, not the half hour it takes under emulation); then the one-patch
//! path's provisioning on the real guest (Debian 13 under QEMU's TCG). Root, after
//! `sudo scripts/test` has filled the cache:
//!
//! ```sh
//! sudo cargo nextest run --run-ignored all -E 'binary(bench_provision)' --no-capture
//! ```
//!
//! It prints each `provision`'s time and its starts of the OpenClaw CLI (the docker stub's
//! `node` wrapper counts them), the ratio, and, for the real guest, setup's guest steps from
//! `setup --json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use support::fleet::Fleet;
use support::real_guest::{OPENAI_KEY, RealGuestHost, RealOpenClaw};

const WAITS: &str = "--ssh-timeout 120 --health-timeout 400";

fn cli_runs(fleet: &Fleet) -> usize {
    fleet
        .guest("a", "cat /var/log/openclaw-runs.log 2>/dev/null || true")
        .lines()
        .count()
}

/// One `provision` that changes the model (so it is a real reprovisioning): its time and its
/// starts of the CLI.
fn provision(fleet: &Fleet, model: &str) -> (f64, usize) {
    let runs = cli_runs(fleet);
    let started = Instant::now();
    let out = fleet.fireclaw_ok(&format!(
        "provision a --model {model} --anthropic-api-key sk-ant-bench {WAITS}"
    ));
    let took = started.elapsed().as_secs_f64();
    assert!(out.contains("Instance a is healthy."), "{out}");
    (took, cli_runs(fleet) - runs)
}

#[test]
#[ignore = "needs root: sandbox"]
fn provisioning_with_one_config_patch_against_a_config_set_per_key() {
    let fleet = Fleet::new("benchprov");
    fleet.guests.use_real_openclaw();
    fleet.fireclaw_ok(&format!(
        "setup --instance a --skip-browser-install --disk-size 64M --openai-api-key {OPENAI_KEY} {WAITS}"
    ));
    let (patch, patch_runs) = provision(&fleet, "anthropic/claude-sonnet-4-6");
    fleet.guest(
        "a",
        "sudo mkdir -p /etc/fireclaw && echo set | sudo tee /etc/fireclaw/openclaw-config-path >/dev/null",
    );
    let (set, set_runs) = provision(&fleet, "openai/gpt-5.5");
    eprintln!(
        "bench_provision (container guest): one config patch {patch:.1} s ({patch_runs} CLI starts), \
         a config set per key {set:.1} s ({set_runs} CLI starts), ratio {:.2}",
        set / patch
    );
    fleet.fireclaw_ok("destroy a -y");
    drop(fleet);

    // The one-patch path on the real guest.
    let fleet = RealGuestHost::boot("benchprovreal");
    let openclaw = RealOpenClaw::cached();
    let parts = &fleet.parts;
    let out = fleet.fireclaw_ok(&format!(
        "setup --instance oc --base-kernel {} --base-initrd {} --base-rootfs {} \
         --openai-api-key {OPENAI_KEY} --openclaw-image {} --openclaw-pull missing \
         --vm-vcpu 2 --vm-mem-mib 2048 --disk-size 6G --skip-browser-install \
         --ssh-timeout 600 --health-timeout 1500 --json",
        parts.kernel.display(),
        parts.initrd.display(),
        openclaw.rootfs.display(),
        openclaw.image,
    ));
    let result: serde_json::Value = serde_json::from_str(&out[..=out.rfind('}').unwrap()]).unwrap();
    let steps = result["times"]["steps"].as_array().unwrap();
    let guest: Vec<String> = steps
        .iter()
        .filter(|s| {
            !["state, assets and units", "boot to SSH", "health"]
                .contains(&s["name"].as_str().unwrap())
        })
        .map(|s| {
            format!(
                "{} {:.1} s",
                s["name"].as_str().unwrap(),
                s["ms"].as_f64().unwrap() / 1000.0
            )
        })
        .collect();
    let provisioning: f64 = steps
        .iter()
        .filter(|s| {
            !["state, assets and units", "boot to SSH", "health"]
                .contains(&s["name"].as_str().unwrap())
        })
        .map(|s| s["ms"].as_f64().unwrap() / 1000.0)
        .sum();
    eprintln!(
        "bench_provision (real guest, TCG): provisioning with one config patch {provisioning:.1} s ({}); setup to healthy {:.1} s",
        guest.join(", "),
        result["times"]["total_ms"].as_f64().unwrap() / 1000.0
    );
    fleet.fireclaw_ok("destroy oc -y");
}
