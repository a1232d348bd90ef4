//! A host sandbox whose VMs are real machines: the Firecracker stand-in in real-machine mode
//! runs QEMU's `microvm` under TCG (`standins/src/bin/firecracker_standin/qemu.rs`), booting
//! the Debian 13 guest disk, cloud kernel and initrd that `scripts/test-deps` builds into the
//! cache, with the test gateway image already in its Docker (`tests/support/guest/image`).
//! fireclaw runs in the sandbox with its production paths, and the guest is reached only
//! through the sandbox's own bridge and tap: nothing leaves the sandbox's network namespace.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use super::real_parts::cache_dir;
use super::sandbox::{BIN_IN_SANDBOX, Sandbox};

/// The provider key the real-guest instances are made with (no provider is ever reached).
pub const OPENAI_KEY: &str = "sk-openai-real-guest-secret";

/// The cached real parts: QEMU and the guest's kernel, initrd, disk and image reference.
pub struct RealParts {
    pub qemu: PathBuf,
    pub firmware: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub image: String,
    /// The test image as a docker-archive (what the disk's Docker was loaded from).
    pub archive: PathBuf,
}

impl RealParts {
    pub fn cached() -> Self {
        let cache = cache_dir();
        let guest = cache.join("guest");
        let parts = Self {
            qemu: cache.join("qemu/bin/qemu-system-x86_64"),
            firmware: cache.join("qemu/firmware"),
            kernel: guest.join("vmlinux"),
            initrd: guest.join("initrd.img"),
            rootfs: guest.join("rootfs.ext4"),
            archive: guest.join("gateway-image.tar"),
            image: std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/guest/image/REFERENCE"
            ))
            .unwrap()
            .trim()
            .to_owned(),
        };
        for path in [
            &parts.qemu,
            &parts.kernel,
            &parts.initrd,
            &parts.rootfs,
            &parts.archive,
        ] {
            assert!(
                path.exists(),
                "{} is missing: build it with: sudo scripts/test-deps --real-openclaw",
                path.display()
            );
        }
        parts
    }
}

/// The real guest's disk with the real OpenClaw's image in its Docker (`scripts/test-deps`,
/// "The real OpenClaw on the real guest"), and that image's reference.
pub struct RealOpenClaw {
    pub rootfs: PathBuf,
    pub image: String,
}

impl RealOpenClaw {
    pub fn cached() -> Self {
        let dir = cache_dir().join("openclaw-guest");
        let rootfs = dir.join("rootfs.ext4");
        assert!(
            rootfs.exists(),
            "{} is missing: build it with: sudo scripts/test-deps --real-openclaw",
            rootfs.display()
        );
        let image = std::fs::read_to_string(dir.join("REFERENCE"))
            .unwrap()
            .trim()
            .to_owned();
        Self { rootfs, image }
    }
}

/// A host sandbox that runs real guests.
pub struct RealGuestHost {
    pub host: Sandbox,
    pub parts: RealParts,
}

impl RealGuestHost {
    pub fn boot(tag: &str) -> Self {
        let parts = RealParts::cached();
        let host = Sandbox::boot(tag);
        // /run is the sandbox's own tmpfs: written from inside.
        let mode = serde_json::json!({ "qemu": parts.qemu, "firmware": parts.firmware });
        host.sh(&format!(
            "mkdir -p /run/fireclaw-standin && printf '%s' '{mode}' > /run/fireclaw-standin/machine.json"
        ));
        Self { host, parts }
    }

    /// Runs fireclaw in the host sandbox as root, with the stand-in as `firecracker` on PATH.
    pub fn fireclaw(&self, args: &str) -> Output {
        self.host.exec(&format!(
            "export PATH={BIN_IN_SANDBOX}:$PATH; fireclaw {args}"
        ))
    }

    /// Runs fireclaw and fails the test unless it succeeds; returns stdout and stderr.
    pub fn fireclaw_ok(&self, args: &str) -> String {
        let output = self.fireclaw(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "fireclaw {args} failed:\n{text}\nconsole:\n{}\nVM units:\n{}",
            self.console_tail(""),
            self.vm_journal()
        );
        text
    }

    /// The arguments of `fireclaw setup` for a small real guest (1 vCPU, as emulation is
    /// slow) on the cached disk, with the image already in the guest.
    pub fn setup_args(&self, id: &str, extra: &str) -> String {
        let parts = &self.parts;
        format!(
            "setup --instance {id} --base-kernel {} --base-initrd {} --base-rootfs {} \
             --openai-api-key {OPENAI_KEY} --openclaw-image {} --openclaw-pull missing \
             --vm-vcpu 1 --vm-mem-mib 1024 --disk-size 3G --skip-browser-install \
             --ssh-timeout 400 --health-timeout 300 {extra}",
            parts.kernel.display(),
            parts.initrd.display(),
            parts.rootfs.display(),
            parts.image,
        )
    }

    /// Runs that setup; returns its output.
    pub fn setup(&self, id: &str, extra: &str) -> String {
        self.fireclaw_ok(&self.setup_args(id, extra))
    }

    /// Runs `script` in the guest over fireclaw's pinned SSH, as the `ubuntu` user.
    pub fn guest(&self, id: &str, script: &str) -> String {
        let quoted = script.replace('\'', r"'\''");
        let output = self.fireclaw(&format!("shell {id} '{quoted}'"));
        assert!(
            output.status.success(),
            "in guest {id}: {script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// A value of the instance's `.env`.
    pub fn env_value(&self, id: &str, key: &str) -> String {
        self.host.env_value(id, key)
    }

    /// The serial console of instance `id` (all instances' when `id` is empty, and those a
    /// failed setup kept): where the kernel first complained (an oops cascades, so its last
    /// lines only show the end), systemd's failures, then the last lines.
    pub fn console_tail(&self, id: &str) -> String {
        let pattern = if id.is_empty() { "*" } else { id };
        self.host
            .exec(&format!(
                "for log in /srv/firecracker/vm-demo/{pattern}/logs/console.log /var/lib/fireclaw/.failed/{pattern}*/console.log; do \
                   [ -f \"$log\" ] || continue; echo \"==> $log <==\"; \
                   echo '-- first kernel complaint:'; \
                   awk '!seen && /^\\[ *[0-9]+\\.[0-9]+\\] .*(BUG:|Oops|WARNING:|watchdog:|rcu: INFO|hung_task|Kernel panic)/ {{ seen = 1; n = 60 }} n > 0 {{ print; n--; if (n == 0) exit }}' \"$log\"; \
                   echo '-- failures and timeouts:'; \
                   grep -a -E -m 20 'FAILED|Failed to|[Tt]imed out|Dependency failed|emergency mode' \"$log\"; \
                   echo '-- last lines:'; tail -n 40 \"$log\"; done 2>/dev/null"
            ))
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect()
    }

    /// Each VM unit's state and the last lines of its own journal (the stand-in's and QEMU's
    /// words), then every QEMU with its state and CPU time: what a boot that never answered
    /// leaves to look at.
    pub fn vm_journal(&self) -> String {
        String::from_utf8_lossy(
            &self
                .host
                .exec(
                    "for unit in $(systemctl list-units --all --plain --no-legend 'firecracker-vmdemo-*' | cut -d' ' -f1); do \
                       echo \"== $unit\"; systemctl show -p ActiveState,SubState,Result,MainPID,NRestarts,ExecMainStartTimestamp \"$unit\"; \
                       journalctl --no-pager -n 40 -o short-monotonic -u \"$unit\"; done 2>&1; \
                     echo '== QEMU'; ps -eo pid,stat,etime,time,rss,args | grep '[q]emu-system' | cut -c1-200",
                )
                .stdout,
        )
        .into_owned()
    }

    /// The serial console of instance `id`, whole.
    pub fn console(&self, id: &str) -> String {
        self.host.sh(&format!(
            "cat /srv/firecracker/vm-demo/{id}/logs/console.log"
        ))
    }

    /// The VM unit's property `name`.
    pub fn vm_unit(&self, id: &str, name: &str) -> String {
        self.host
            .sh(&format!(
                "systemctl show -p {name} --value firecracker-vmdemo-{id}.service"
            ))
            .trim()
            .to_owned()
    }

    /// Waits until `check` holds, for at most `bound`; panics with `what` otherwise.
    pub fn wait_for(&self, what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + bound;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {bound:?}; console:\n{}\nVM units:\n{}",
                self.console_tail(""),
                self.vm_journal()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
