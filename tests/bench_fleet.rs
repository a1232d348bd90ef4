//! Benchmark (not run by CI; its command is in the README): wall time of `fireclaw list` and
//! `fireclaw status` over 100 instances whose guests do not answer (on-link addresses with
//! nobody home behind the bridge) and over healthy stand-in guests. Target: under 2 s for the
//! 100 unreachable ones (fireclaw 0.2.0 needs about 3 s for each). It checks that every row is
//! there and right, then prints the times. Root, in a sandbox:
//!
//! ```sh
//! BENCH_HEALTHY=10 cargo nextest run --run-ignored all -E 'binary(bench_fleet)' --no-capture
//! ```
//!
//! Every guest stand-in runs its own systemd as the machine's root user, and they share that
//! user's `fs.inotify.max_user_instances` (128 on these machines): about 18 guests fit. Hence 10
//! healthy guests by default; 20 where that limit was raised.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use support::fleet::Fleet;

fn timed(fleet: &Fleet, args: &str, runs: u32) -> (f64, String) {
    let mut best = f64::MAX;
    let mut out = String::new();
    for _ in 0..runs {
        let started = Instant::now();
        out = fleet.fireclaw_ok(args);
        best = best.min(started.elapsed().as_secs_f64());
    }
    (best, out)
}

#[test]
#[ignore = "needs root: sandbox"]
fn list_and_status_wall_time_over_a_fleet() {
    let fleet = Fleet::new("bench");
    // 100 instances on the bridge's subnet with nobody home: each probe waits out its timeout.
    fleet.host.sh(
        "ip link add fc-br0 type bridge && ip addr add 172.16.0.1/24 dev fc-br0 && ip link set fc-br0 up && \
         for i in $(seq 2 101); do d=/var/lib/fireclaw/.vm-idle$i; mkdir -p $d; \
         printf 'FIRECLAW_STATE_FORMAT=plain-v1\\nINSTANCE_ID=idle%s\\nHOST_PORT=%s\\nVM_IP=172.16.0.%s\\nVM_TAP=tidle%s\\n' $i $((20000+i)) $i $i > $d/.env; done",
    );
    let (list_idle, out) = timed(&fleet, "list --json", 3);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = json["instances"].as_array().unwrap();
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().all(|r| r["health"] == "down"));
    let (status_idle, _) = timed(&fleet, "status", 3);
    fleet
        .host
        .sh("rm -rf /var/lib/fireclaw/.vm-idle* && ip link del fc-br0");

    let healthy: usize = std::env::var("BENCH_HEALTHY")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let started = Instant::now();
    for n in 0..healthy {
        fleet.healthy(&format!("bot{n}"));
    }
    let setup_secs = started.elapsed().as_secs_f64();
    let (list_healthy, out) = timed(&fleet, "list --json", 3);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = json["instances"].as_array().unwrap();
    assert_eq!(rows.len(), healthy);
    assert!(rows.iter().all(|r| r["health"] == "up"), "{out}");
    let (status_one, _) = timed(&fleet, "status bot7", 3);
    eprintln!(
        "BENCH list, 100 unreachable: {list_idle:.2}s; status (fleet), 100 unreachable: {status_idle:.2}s; \
         list, {healthy} healthy: {list_healthy:.2}s; status bot7: {status_one:.2}s; {healthy} setups: {setup_secs:.1}s"
    );
}
