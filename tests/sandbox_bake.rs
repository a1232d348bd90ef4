//! `fireclaw image bake` on a host sandbox with the container guest (the real guest's bake is in
//! `sandbox_real_guest.rs`): fireclaw SIGKILLed at every bake step, each leftover named by
//! `doctor`, hidden from `list` and removed by the next bake or by `host cleanup`; bad input
//! refused with one line and nothing changed; setup on the baked image, with its image used
//! as it is, a kernel other than the baked one warned about, and a baked file that no longer
//! matches its record refused with the command that rebuilds it. Root only: run through
//! `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use fireclaw::env_vars::FIRECLAW_TEST_CRASH_AT as CRASH_AT;
use support::fleet::{Fleet, is_shared_host_piece};
use support::sandbox::BIN_IN_SANDBOX;

const KEY: &str = "sk-bake-secret";
const IMAGE: &str = "fireclaw.test/gateway:7";
const ARCHIVE: &str = "/root/openclaw-image.tar";
const IMAGES: &str = "/srv/firecracker/base/images";
/// An images dir other than BASE_IMAGES_DIR (`image bake --dir`).
const ELSEWHERE: &str = "/srv/elsewhere";

fn bake_args(name: &str) -> String {
    format!(
        "image bake --name {name} --openclaw-image {IMAGE} --openclaw-image-archive {ARCHIVE} --skip-browser-install --vm-vcpu 1 --vm-mem-mib 512 --ssh-timeout 60"
    )
}

/// Every crash point of `image bake`, in order.
const BAKE_STEPS: [&str; 8] = [
    "bake:builder-made",
    "bake:booted",
    "bake:archive-copied",
    "bake:installed",
    "bake:cleaned",
    "bake:stopped",
    "bake:copied",
    "bake:recorded",
];

/// The host as `Fleet::host_snapshot` sees it, without the pieces every first setup makes and
/// `host cleanup` removes, plus the images directory.
fn host_state(fleet: &Fleet) -> String {
    // The images dir's lock file stays, as the instance locks do.
    format!(
        "{}\n{}",
        host_pieces(fleet),
        fleet.host.sh(&format!(
            "ls -a {IMAGES} | grep -v '^.fireclaw-images.lock$'; cat {IMAGES}/fireclaw-baked.json 2>/dev/null || true"
        ))
    )
}

/// Units, links, rules, fireclaw's directories and accounts, without the shared pieces.
fn host_pieces(fleet: &Fleet) -> String {
    let snapshot: Vec<String> = fleet
        .host_snapshot()
        .lines()
        .filter(|line| !is_shared_host_piece(line))
        .map(str::to_owned)
        .collect();
    snapshot.join("\n")
}

fn doctor_details(fleet: &Fleet, name: &str) -> Vec<String> {
    let doctor: serde_json::Value =
        serde_json::from_slice(&fleet.fireclaw("doctor --json").stdout).unwrap();
    doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .map(|c| {
            format!(
                "{}: {}",
                c["status"],
                c["detail"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn listed(fleet: &Fleet) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(&fleet.fireclaw_ok("list --json")).unwrap();
    list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_kill_at_any_bake_step_is_named_and_the_next_bake_or_host_cleanup_removes_it() {
    let fleet = Fleet::new("bakecrash");
    // The docker stub "loads" any file: the image is named by the archive's digest.
    fleet
        .host
        .sh(&format!("head -c 3000000 /dev/urandom > {ARCHIVE}"));
    let before = host_state(&fleet);
    let pieces_before = host_pieces(&fleet);
    for (index, step) in BAKE_STEPS.iter().enumerate() {
        let out = fleet.fireclaw_env(&format!("{CRASH_AT}={step}"), &bake_args("bots"));
        assert!(out.trim_end().ends_with("rc=137"), "{step}: {out}");
        // The builder is never an instance to list, but doctor names it.
        assert_eq!(listed(&fleet), Vec::<String>::new(), "{step}");
        let builder = doctor_details(&fleet, "image bake builder");
        assert!(
            builder.len() == 1
                && builder[0].contains("fireclaw-bake")
                && builder[0].contains("fireclaw host cleanup"),
            "{step}: {builder:?}"
        );
        // From the copy on, the staging copy is named too.
        let staging = doctor_details(&fleet, "base images leftovers");
        if index >= 6 {
            assert!(
                staging.len() == 1 && staging[0].contains(".fireclaw-image-"),
                "{step}: {staging:?}"
            );
        } else {
            assert_eq!(staging, Vec::<String>::new(), "{step}");
        }
        // Alternately host cleanup and the next (killed) bake remove what was left.
        if index % 2 == 0 {
            let out = fleet.fireclaw_ok("host cleanup");
            assert!(
                out.contains("removed the builder VM (fireclaw-bake)"),
                "{step}: {out}"
            );
            assert_eq!(
                host_state(&fleet),
                before,
                "after a kill at {step} and host cleanup"
            );
        }
    }
    // The last kill (after the record, the commit point, before the rename) leaves the whole
    // file staged: the next bake finishes installing it and, the name being taken now, stops
    // there; with --force it bakes again, and nothing of the builder stays.
    let finished = fleet.fireclaw(&bake_args("bots"));
    let stderr = String::from_utf8_lossy(&finished.stderr);
    assert!(!finished.status.success(), "{stderr}");
    assert!(
        stderr.contains("finished installing baked image 'bots'")
            && stderr
                .contains("an interrupted bake of it was just finished); replace it with --force"),
        "{stderr}"
    );
    let recorded: serde_json::Value =
        serde_json::from_str(&fleet.host.sh(&format!("cat {IMAGES}/fireclaw-baked.json"))).unwrap();
    assert_eq!(
        fleet
            .host
            .sh(&format!("sha256sum {IMAGES}/bots.ext4 | cut -c1-64"))
            .trim(),
        recorded["images"][0]["sha256"],
        "the finished file is the recorded one"
    );
    assert_eq!(
        doctor_details(&fleet, "image bake builder"),
        Vec::<String>::new()
    );
    let out = fleet.fireclaw_ok(&format!("{} --force", bake_args("bots")));
    assert!(out.contains(&format!("Baked {IMAGES}/bots.ext4")), "{out}");
    assert_eq!(listed(&fleet), Vec::<String>::new());
    assert_eq!(
        doctor_details(&fleet, "image bake builder"),
        Vec::<String>::new()
    );
    assert_eq!(host_pieces(&fleet), pieces_before);
    assert_eq!(
        fleet.host.sh(&format!("ls -A {IMAGES}")),
        ".fireclaw-images.lock\nbots.ext4\nfireclaw-baked.json\nrootfs.ext4\nvmlinux\n"
    );
    fleet.host.sh(&format!("e2fsck -fn {IMAGES}/bots.ext4"));
    let manifest: serde_json::Value =
        serde_json::from_str(&fleet.host.sh(&format!("cat {IMAGES}/fireclaw-baked.json"))).unwrap();
    let record = &manifest["images"][0];
    assert_eq!(
        manifest["images"].as_array().unwrap().len(),
        1,
        "{manifest}"
    );
    assert_eq!(record["name"], "bots");
    assert_eq!(record["openclaw"]["reference"], IMAGE);
    let archive_sha256 = fleet.host.sh(&format!("sha256sum {ARCHIVE} | cut -c1-64"));
    assert_eq!(
        record["openclaw"]["image_id"],
        format!("sha256:{}", archive_sha256.trim()),
        "{record}"
    );
    assert_eq!(
        record["openclaw"]["archive"]["sha256"],
        archive_sha256.trim()
    );
    assert_eq!(record["docker_version"], "0.0.0-stub");
    assert_eq!(record["browser"], false);
    let size: u64 = fleet
        .host
        .sh(&format!("stat -c %s {IMAGES}/bots.ext4"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(record["size"], size);
    // Shrunk to its content (the builder's disk was over 2 GiB).
    assert!(size < 512 * 1024 * 1024, "{size}");
    let list = fleet.fireclaw_ok("image list");
    assert!(
        list.contains("bots (bots.ext4)") && list.contains(&format!("openclaw {IMAGE} sha256:")),
        "{list}"
    );

    // A --force rebake killed past its record, over an existing image: host cleanup installs
    // the new file, so the old file never stays under the new record.
    let sha256_of_file = || {
        fleet
            .host
            .sh(&format!("sha256sum {IMAGES}/bots.ext4 | cut -c1-64"))
            .trim()
            .to_owned()
    };
    let old_sha256 = sha256_of_file();
    assert_eq!(record["sha256"], old_sha256);
    let out = fleet.fireclaw_env(
        &format!("{CRASH_AT}=bake:recorded"),
        &format!("{} --force", bake_args("bots")),
    );
    assert!(out.trim_end().ends_with("rc=137"), "{out}");
    let cleanup = fleet.fireclaw_ok("host cleanup");
    assert!(
        cleanup.contains("finished installing baked image 'bots'"),
        "{cleanup}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&fleet.host.sh(&format!("cat {IMAGES}/fireclaw-baked.json"))).unwrap();
    let new_sha256 = sha256_of_file();
    assert_ne!(new_sha256, old_sha256, "the rebake made another disk");
    assert_eq!(manifest["images"][0]["sha256"], new_sha256, "{manifest}");
    assert_eq!(
        fleet.host.sh(&format!("ls -A {IMAGES}")),
        ".fireclaw-images.lock\nbots.ext4\nfireclaw-baked.json\nrootfs.ext4\nvmlinux\n"
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn bad_bake_input_changes_nothing_and_setup_uses_a_baked_image_as_recorded() {
    let fleet = Fleet::new("bakeinput");
    fleet
        .host
        .sh(&format!("head -c 100000 /dev/urandom > {ARCHIVE}"));
    fleet.fireclaw_ok(&bake_args("bots"));
    let before = host_state(&fleet);

    // Bad input: one line on stderr, a non-zero exit, nothing changed.
    fleet
        .host
        .sh("mkdir -p /mnt/small && mount -t tmpfs -o size=16M tmpfs /mnt/small");
    for (args, expected) in [
        (
            bake_args("other").replace(ARCHIVE, "/root/absent.tar"),
            "image archive /root/absent.tar",
        ),
        (
            bake_args("other").replace(IMAGE, "not*an*image"),
            "image 'not*an*image' is not a container image reference",
        ),
        (bake_args("bots"), "baked image 'bots' already exists"),
        (bake_args("../x"), "must not contain '/' or '..'"),
        (bake_args("rootfs"), "taken by the base files"),
        (
            format!(
                "{} --dir /mnt/small --from {IMAGES}/rootfs.ext4 --kernel {IMAGES}/vmlinux",
                bake_args("other")
            ),
            "too little disk: the bake needs",
        ),
    ] {
        let output = fleet.fireclaw(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args}");
        assert!(stderr.contains(expected), "{args}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args}: {stderr}");
        assert_eq!(host_state(&fleet), before, "{args}");
    }
    assert_eq!(fleet.host.sh("ls -A /mnt/small"), "");

    // SIGTERM while the builder boots: the bake stops after its current step, removes the
    // builder, exits 130 (fireclaw's status for any interrupt), and nothing is changed.
    let interrupted = fleet.host.sh(&format!(
        "set -m; export PATH={BIN_IN_SANDBOX}:$PATH; fireclaw {} > /run/bake.out 2> /run/bake.err & pid=$!; \
         for i in $(seq 300); do grep -q 'booting the builder VM' /run/bake.err && break; sleep 0.2; done; \
         kill -TERM $pid; wait $pid; echo rc=$?; cat /run/bake.err",
        bake_args("other")
    ));
    assert!(
        interrupted.contains("rc=130")
            && interrupted.contains(
                "bake of 'other' was interrupted; the builder VM and partial image were removed"
            ),
        "{interrupted}"
    );
    assert_eq!(host_state(&fleet), before, "after SIGTERM");

    // The browser, baked into the shared dir (the docker stub's npx acts out Playwright 1.49's
    // install, which names its binary headless_shell), in an images dir of its own (--dir):
    // setup names the file, reads the record beside it, and doctor finds it there.
    let out = fleet.fireclaw_ok(&format!(
        "{} --dir {ELSEWHERE} --from {IMAGES}/rootfs.ext4 --kernel {IMAGES}/vmlinux",
        bake_args("web").replace("--skip-browser-install", "--browser-install")
    ));
    assert!(
        out.contains("browser yes")
            && out.contains(&format!(
                "--base-rootfs {ELSEWHERE}/web.ext4 --base-kernel {IMAGES}/vmlinux"
            )),
        "{out}"
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &fleet
            .host
            .sh(&format!("cat {ELSEWHERE}/fireclaw-baked.json")),
    )
    .unwrap();
    assert_eq!(manifest["images"][0]["name"], "web", "{manifest}");
    assert_eq!(manifest["images"][0]["browser"], true, "{manifest}");
    // The container guest does not boot from the baked disk: the browser the bake left there is
    // put into the guest as the disk would carry it, and provisioning must find and mount it.
    let shell = "/opt/fireclaw/playwright/chromium_headless_shell-1148/chrome-linux/headless_shell";
    fleet.guests.preset(shell, "#!/bin/sh\n");
    let out = fleet.fireclaw_ok(&format!(
        "setup --instance e --base-rootfs {ELSEWHERE}/web.ext4 --disk-size 3G --ssh-timeout 60 --health-timeout 30 --openai-api-key {KEY}"
    ));
    assert!(out.contains("Instance e is healthy."), "{out}");
    let state: serde_json::Value =
        serde_json::from_str(&fleet.host.sh("cat /var/lib/fireclaw/.vm-e/fireclaw.json")).unwrap();
    assert_eq!(state["baked_image"], "web", "{state}");
    assert_eq!(
        state["baked_file"],
        format!("{ELSEWHERE}/web.ext4"),
        "{state}"
    );
    let unit = fleet.guest("e", "cat /etc/systemd/system/openclaw-e.service");
    assert!(
        unit.contains("-v /opt/fireclaw/playwright:/opt/fireclaw/playwright:ro"),
        "{unit}"
    );
    // The baked browser's path goes into the one config write.
    assert_eq!(
        fleet.fake_openclaw_config("e")["browser"]["executablePath"],
        shell,
        "{:?}",
        fleet.openclaw_runs("e")
    );
    let doctor = doctor_details(&fleet, "baked image web");
    assert!(
        doctor.len() == 1 && doctor[0].starts_with("\"pass\"") && doctor[0].contains(ELSEWHERE),
        "{doctor:?}"
    );
    fleet.fireclaw_ok("destroy e -y");

    // setup on the baked image: its OpenClaw image, pulled only when missing, and recorded.
    let out = fleet.fireclaw_ok(&format!(
        "setup --instance c --base-image bots --disk-size 3G --skip-browser-install --ssh-timeout 60 --health-timeout 30 --openai-api-key {KEY}"
    ));
    assert!(out.contains("Instance c is healthy."), "{out}");
    let state: serde_json::Value =
        serde_json::from_str(&fleet.host.sh("cat /var/lib/fireclaw/.vm-c/fireclaw.json")).unwrap();
    assert_eq!(state["baked_image"], "bots", "{state}");
    assert_eq!(state["openclaw_pull"], "missing", "{state}");
    assert_eq!(fleet.env_value("c", "OPENCLAW_IMAGE"), IMAGE);
    let journal = fleet.guest("c", "sudo journalctl -t fireclaw-provision --no-pager");
    assert!(
        journal.contains(&format!(
            "using {IMAGE}, already in the guest (pull policy: missing)"
        )),
        "{journal}"
    );
    assert!(!journal.contains("pulling"), "{journal}");
    let doctor = doctor_details(&fleet, "baked image bots");
    assert!(
        doctor.len() == 1
            && doctor[0].starts_with("\"pass\"")
            && doctor[0].contains("matches its record"),
        "{doctor:?}"
    );

    // Another kernel than the baked one: a warning, not a refusal.
    fleet.host.sh(&format!(
        "cp {IMAGES}/vmlinux /root/vmlinux-other && printf x >> /root/vmlinux-other"
    ));
    let preview = fleet.fireclaw(&format!(
        "setup --instance d --base-image bots --base-kernel /root/vmlinux-other --disk-size 3G --openai-api-key {KEY} --dry-run"
    ));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&preview.stdout),
        String::from_utf8_lossy(&preview.stderr)
    );
    assert!(preview.status.success(), "{text}");
    assert!(
        text.contains("is not the one baked image 'bots' was made with"),
        "{text}"
    );

    // A baked file that no longer matches its record: refused with the command that rebuilds
    // it, and named by doctor.
    fleet
        .host
        .sh(&format!("truncate -s +1M {IMAGES}/bots.ext4"));
    let refused = fleet.fireclaw(&format!(
        "setup --instance d --base-image bots --disk-size 3G --openai-api-key {KEY}"
    ));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("no longer matches its record")
            && stderr.contains(&format!(
                "rebuild it with: fireclaw image bake --name bots --force --dir {IMAGES} --from {IMAGES}/rootfs.ext4"
            )),
        "{stderr}"
    );
    assert!(!fleet.host.ok("test -e /var/lib/fireclaw/.vm-d"));
    let doctor = doctor_details(&fleet, "baked image bots");
    assert!(
        doctor.len() == 1 && doctor[0].starts_with("\"fail\""),
        "{doctor:?}"
    );
    // A name nobody baked.
    let unknown = fleet.fireclaw(&format!(
        "setup --instance d --base-image nothing --openai-api-key {KEY}"
    ));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no baked image 'nothing'"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    // An install that fails inside the builder (every docker call fails): the bake fails,
    // and the builder and partial image are removed.
    let before = host_state(&fleet);
    fleet.guests.preset("/etc/docker-stub/fail", "");
    let failed = fleet.fireclaw(&bake_args("broken"));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains("bake of 'broken' failed: the install phase in the builder")
            && stderr.contains("docker load of the archive failed")
            && stderr.contains("the builder VM (fireclaw-bake) and the partial image are gone")
            && stderr.contains("kept for you: /var/lib/fireclaw/.failed/fireclaw-bake-"),
        "{stderr}"
    );
    assert_eq!(host_state(&fleet), before, "after a failed install");
    // The builder's id is never an instance's.
    let reserved = fleet.fireclaw(&format!(
        "setup --instance fireclaw-bake --openai-api-key {KEY}"
    ));
    assert!(
        String::from_utf8_lossy(&reserved.stderr).contains("is reserved for the builder VM"),
        "{}",
        String::from_utf8_lossy(&reserved.stderr)
    );
}
