//! The stand-in's real-machine mode: instead of greeting the harness for a container guest, the
//! VMM runs QEMU's `microvm` machine under TCG (no `/dev/kvm` needed) as its child, built from
//! the Firecracker config, and acts out each API call on it through QMP. A test chooses the
//! mode by writing [`MODE_FILE`] in the host sandbox before the VM starts.
//!
//! What Firecracker 1.16.1 does that shapes this (its `builder.rs` and `device_manager/mmio.rs`,
//! and its FAQ): it adds `root=/dev/vda rw` and `pci=off` to the config's `boot_args` (and
//! describes each virtio-mmio device on the command line and in ACPI: here QEMU's own ACPI
//! tables describe them, at QEMU's own addresses); on x86 its process outlives a guest
//! `poweroff` and ends when a `reboot=k` guest reboots or panics. So QEMU runs with
//! `-no-reboot` and `-no-shutdown`, which stop it at any guest shutdown or reset and report
//! why (QMP `SHUTDOWN`): the stand-in ends QEMU after a reset or panic and leaves it waiting
//! after a poweroff, and the VMM ends when QEMU does. `SendCtrlAltDel` cannot be keys here (`microvm` has no i8042): it is
//! QMP `system_powerdown`, the ACPI power button, and the poweroff that follows ends the VMM
//! as the guest's reboot after Ctrl-Alt-Del ends Firecracker. Pause and resume are QMP `stop`
//! and `cont`; a snapshot's memory file is QEMU's migration stream (`migrate` to `file:`), and
//! a load starts a new QEMU with the recorded arguments and `-incoming defer -S`, which takes
//! that stream in, so the guest's processes carry on.
//!
//! Under the VM unit's confinement: `MemoryDenyWriteExecute=` forbids TCG's writable and
//! executable code buffer, so `split-wx=on` maps it twice; `tb-size` bounds the translation
//! cache (it may grow to 1 GiB otherwise, beyond `MemoryMax=`); `thread-pool-max` bounds the
//! I/O threads below `TasksMax=`.
//!
//! One addition to the kernel command line is the emulation's own: the guest is told its TSC
//! rate (see [`host_tsc_khz`]), ahead of Firecracker's line, which stays whole at the end.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The machine: `microvm` with ACPI (which describes the virtio-mmio devices) and without the
/// legacy 8259 PIC, so the IOAPIC routes every interrupt. With the PIC, a boot under load
/// sometimes took an interrupt as vector 0 just after `start_kernel` enabled interrupts: an
/// "Oops: divide error" in the idle task, whose reboot then never came, so the VM hung without
/// SSH. Measured here with Debian 13's cloud kernel, 4 boots at a time on 2 cores: 15 in 240
/// boots with the PIC, none in 600 without it (which boot on to the same login).
pub const MACHINE_TYPE: &str = "microvm,acpi=on,pic=off";

/// Where a test asks for real machines: `{"qemu": "<binary>", "firmware": "<-L dir>"}`.
pub const MODE_FILE: &str = "/run/fireclaw-standin/machine.json";

/// Firecracker's kernel command line when the config gives no `boot_args`
/// (vmm_config/boot_source.rs).
const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 pci=off nomodules 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
/// TCG's translation cache, in MiB.
const TB_SIZE_MIB: u32 = 64;
/// QEMU's I/O worker threads at most.
const IO_THREADS: u32 = 8;
/// The tap and the QMP socket, as the child's file descriptors.
const TAP_FD: RawFd = 3;
const QMP_FD: RawFd = 4;
/// How long a migration may take either way.
const MIGRATION_BOUND: Duration = Duration::from_secs(300);
/// How long one QMP command may take to be answered (a migration is polled, not awaited).
const COMMAND_BOUND: Duration = Duration::from_secs(30);

#[derive(Clone, serde::Deserialize)]
pub struct Mode {
    pub qemu: PathBuf,
    pub firmware: PathBuf,
}

impl Mode {
    /// The mode the test chose: `Ok(None)` for the container guest (no [`MODE_FILE`]), an
    /// error for a mode file that does not parse, so a test never silently gets the other
    /// guest.
    pub fn chosen() -> Result<Option<Self>, String> {
        let text = match std::fs::read_to_string(MODE_FILE) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("read {MODE_FILE}: {e}")),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("parse {MODE_FILE}: {e}"))
    }
}

/// What QEMU is built from: the Firecracker config's machine.
pub struct MachineSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    /// The config's `boot_args`, if it has them.
    pub boot_args: Option<&'a str>,
    pub vcpus: u64,
    pub memory_mib: u64,
    /// The config's drives in its order.
    pub drives: Vec<DriveSpec<'a>>,
    pub mac: &'a str,
    /// The rate the guest's TSC counts at (see [`host_tsc_khz`]).
    pub tsc_khz: u64,
}

/// The host's TSC rate in kHz: under TCG a guest's `rdtsc` reads the host's TSC, so this is
/// the guest's rate too. The guest kernel is told it (`tsc_early_khz=`) because it cannot
/// measure it reliably: it times the TSC against the PIT, and when the host preempts QEMU
/// during that (measured: in 6 boots of 8 with both host cores busy) it finds no rate
/// ("Marking TSC unstable due to could not calculate TSC khz") and hangs before its console
/// is up. Firecracker's guests on KVM get the rate from the hypervisor instead.
pub fn host_tsc_khz() -> u64 {
    let sample = || {
        // SAFETY: `rdtsc` only reads the time-stamp counter, which every x86_64 CPU has.
        let ticks = unsafe { std::arch::x86_64::_rdtsc() };
        (Instant::now(), ticks)
    };
    let (start, start_ticks) = sample();
    std::thread::sleep(Duration::from_millis(50));
    let (end, end_ticks) = sample();
    let nanos = end.duration_since(start).as_nanos().max(1);
    let khz = u128::from(end_ticks.wrapping_sub(start_ticks)) * 1_000_000 / nanos;
    u64::try_from(khz).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy)]
pub struct DriveSpec<'a> {
    pub path: &'a Path,
    pub read_only: bool,
    pub is_root: bool,
}

impl MachineSpec<'_> {
    /// The drives as Firecracker attaches them: the root device first (it becomes `vda`),
    /// then the others in the config's order.
    fn attached(&self) -> Vec<DriveSpec<'_>> {
        let mut drives = self.drives.clone();
        drives.sort_by_key(|d| !d.is_root);
        drives
    }

    /// The kernel command line as Firecracker 1.16.1 builds it (builder.rs): the config's
    /// (or its default), then `root=/dev/vda` with `ro` or `rw` when a drive is the root
    /// device, and `pci=off`. The virtio-mmio devices Firecracker also lists there are
    /// described by QEMU's own ACPI tables instead.
    fn command_line(&self) -> String {
        let mut line = self
            .boot_args
            .unwrap_or(DEFAULT_BOOT_ARGS)
            .trim()
            .to_owned();
        if let Some(root) = self.drives.iter().find(|d| d.is_root) {
            line.push_str(if root.read_only {
                " root=/dev/vda ro"
            } else {
                " root=/dev/vda rw"
            });
        }
        line.push_str(" pci=off");
        line
    }
}

/// QEMU's arguments for `spec` (the ones a snapshot records and a load repeats).
pub fn arguments(mode: &Mode, spec: &MachineSpec<'_>) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-M".into(),
        MACHINE_TYPE.into(),
        "-accel".into(),
        format!("tcg,split-wx=on,tb-size={TB_SIZE_MIB}"),
        "-cpu".into(),
        "max".into(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        spec.memory_mib.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-L".into(),
        mode.firmware.display().to_string(),
        "-object".into(),
        format!("main-loop,id=main-loop,thread-pool-max={IO_THREADS}"),
        "-kernel".into(),
        spec.kernel.display().to_string(),
    ];
    if let Some(initrd) = spec.initrd {
        args.extend(["-initrd".into(), initrd.display().to_string()]);
    }
    // Firecracker's command line stays whole at the end, behind the emulation's own words:
    // the TSC rate, and an early console on the serial port, so a boot that stalls before the
    // kernel's console is up still shows how far it got.
    args.extend([
        "-append".into(),
        format!(
            "tsc_early_khz={} earlyprintk=serial {}",
            spec.tsc_khz,
            spec.command_line()
        ),
    ]);
    // The serial console on the VMM's stdout, where Firecracker writes it.
    args.extend([
        "-chardev".into(),
        "stdio,id=console,signal=off".into(),
        "-serial".into(),
        "chardev:console".into(),
    ]);
    for (index, drive) in spec.attached().iter().enumerate() {
        args.extend([
            "-drive".into(),
            format!(
                "id=drive{index},file={},format=raw,if=none,readonly={}",
                drive.path.display().to_string().replace(',', ",,"),
                if drive.read_only { "on" } else { "off" }
            ),
            "-device".into(),
            format!("virtio-blk-device,drive=drive{index}"),
        ]);
    }
    args.extend([
        "-netdev".into(),
        format!("tap,id=net0,fd={TAP_FD}"),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={}", spec.mac),
        "-chardev".into(),
        format!("socket,id=qmp,fd={QMP_FD}"),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-no-shutdown".into(),
        "-no-reboot".into(),
    ]);
    args
}

/// A running QEMU and its QMP connection.
pub struct Machine {
    /// QEMU's pid; its `Child` belongs to the thread that waits for it.
    pid: i32,
    /// Set once that thread has reaped QEMU, so its pid is never signalled after reuse.
    reaped: Arc<AtomicBool>,
    qmp: Qmp,
    /// Set by `SendCtrlAltDel`: the guest's poweroff that follows ends the VMM.
    ending: Arc<AtomicBool>,
    /// Set when the VMM ends for another reason (a failed load): QEMU's end is then no
    /// guest reboot to report.
    disarmed: Arc<AtomicBool>,
    pub args: Vec<String>,
}

impl Machine {
    /// Starts QEMU with `args` (plus `extra`), the tap as its fd [`TAP_FD`]; `ended` is called
    /// once QEMU has exited, unless the machine was disarmed, with whether QEMU ended as the
    /// stand-in had it end (exit 0), not by crashing or being killed.
    pub fn start(
        mode: &Mode,
        args: Vec<String>,
        extra: &[&str],
        tap: &File,
        ended: impl FnOnce(bool) + Send + 'static,
    ) -> Result<Self, String> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("QMP socket pair: {e}"))?;
        let tap_fd = tap.as_raw_fd();
        let qmp_fd = theirs.as_raw_fd();
        let mut command = Command::new(&mode.qemu);
        command
            .args(&args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2, prctl,
        // getppid, kill) on descriptors this process owns.
        unsafe {
            command.pre_exec(move || {
                // Copies above the targets first, so that neither target overwrites the other
                // source; dup2 onto a different fd clears FD_CLOEXEC on what QEMU inherits.
                let tap = libc::fcntl(tap_fd, libc::F_DUPFD_CLOEXEC, 10);
                let qmp = libc::fcntl(qmp_fd, libc::F_DUPFD_CLOEXEC, 10);
                if tap < 0 || qmp < 0 || libc::dup2(tap, TAP_FD) < 0 || libc::dup2(qmp, QMP_FD) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // QEMU ends with the VMM (the thread that starts it serves for the VMM's whole
                // life), as a VMM's guest does, however the VMM ends.
                let parent = libc::getppid();
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", mode.qemu.display()))?;
        drop(theirs);
        // The console passes through the VMM's stdout, where Firecracker writes it.
        if let Some(mut console) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = std::io::Read::read(&mut console, &mut buffer) {
                    if n == 0 {
                        break;
                    }
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buffer[..n]);
                    let _ = out.flush();
                }
            });
        }
        let pid = i32::try_from(child.id()).map_err(|e| format!("QEMU's pid: {e}"))?;
        let reaped = Arc::new(AtomicBool::new(false));
        let ending = Arc::new(AtomicBool::new(false));
        let disarmed = Arc::new(AtomicBool::new(false));
        let (events, event) = mpsc::channel();
        let qmp = Qmp::connect(ours, events)?;
        // With -no-reboot and -no-shutdown, QEMU stops (and stays) at any guest shutdown, and
        // says why: a reset (a reboot, or the reboot after a panic) ends it, as a `reboot=k`
        // guest ends Firecracker; a poweroff ends it only after SendCtrlAltDel (Firecracker's
        // process outlives a guest poweroff on x86).
        {
            let mut child: Child = child;
            let reaped = Arc::clone(&reaped);
            let ending = Arc::clone(&ending);
            let disarmed = Arc::clone(&disarmed);
            let quit = qmp.clone_for_quit();
            std::thread::spawn(move || {
                for (name, reason) in event {
                    let reset = matches!(reason.as_str(), "guest-reset" | "guest-panic");
                    if name == "SHUTDOWN" && (reset || ending.load(Ordering::SeqCst)) {
                        let _ = quit.send_quit();
                    }
                }
                // The QMP connection closed: QEMU has ended or is ending.
                let clean = child.wait().is_ok_and(|status| status.success());
                reaped.store(true, Ordering::SeqCst);
                if !disarmed.load(Ordering::SeqCst) {
                    ended(clean);
                }
            });
        }
        Ok(Self {
            pid,
            reaped,
            qmp,
            ending,
            disarmed,
            args,
        })
    }

    pub fn pause(&self) -> Result<(), String> {
        self.qmp.execute("stop", None).map(drop)
    }

    pub fn resume(&self) -> Result<(), String> {
        self.qmp.execute("cont", None).map(drop)
    }

    /// `SendCtrlAltDel`: the ACPI power button; the guest's poweroff then ends QEMU.
    pub fn ctrl_alt_del(&self) -> Result<(), String> {
        self.ending.store(true, Ordering::SeqCst);
        self.qmp.execute("system_powerdown", None).map(drop)
    }

    /// Writes the migration stream of the paused guest to `path`.
    pub fn save_memory(&self, path: &Path) -> Result<(), String> {
        let uri = format!("file:{}", path.display());
        self.qmp
            .execute("migrate", Some(serde_json::json!({ "uri": uri })))?;
        self.await_migration()
    }

    /// Takes in the migration stream at `path` (QEMU started with `-incoming defer`).
    pub fn load_memory(&self, path: &Path) -> Result<(), String> {
        let uri = format!("file:{}", path.display());
        self.qmp
            .execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))?;
        self.await_migration()
    }

    fn await_migration(&self) -> Result<(), String> {
        let deadline = Instant::now() + MIGRATION_BOUND;
        loop {
            let answer = self.qmp.execute("query-migrate", None)?;
            match answer["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    return Err(format!(
                        "migration {}",
                        answer["error-desc"].as_str().unwrap_or("failed")
                    ));
                }
                _ if Instant::now() > deadline => return Err("migration timed out".into()),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Ends QEMU at once and waits until it is gone, for a VMM that ends for its own reason
    /// (a failed load) or boots its machine again.
    pub fn kill(&self) {
        self.disarmed.store(true, Ordering::SeqCst);
        if !self.reaped.load(Ordering::SeqCst) {
            // SAFETY: kill(2) on QEMU's pid, which is not reaped yet and so not reused.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        // Until it is gone it holds its drives' locks, which a QEMU started next would need.
        let deadline = Instant::now() + COMMAND_BOUND;
        while !self.reaped.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A QMP connection: each command carries an id its answer is matched by; events are passed
/// on by name.
struct Qmp {
    writer: Arc<Mutex<UnixStream>>,
    answers: Mutex<mpsc::Receiver<serde_json::Value>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A second handle that can only send `quit` (for the event thread).
struct QuitHandle {
    writer: Arc<Mutex<UnixStream>>,
}

impl QuitHandle {
    fn send_quit(&self) -> std::io::Result<()> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("QMP writer poisoned"))?;
        writer.write_all(b"{\"execute\":\"quit\",\"id\":\"quit\"}\n")
    }
}

impl Qmp {
    /// `events` gets each event's name and its `reason`, if it has one.
    fn connect(stream: UnixStream, events: mpsc::Sender<(String, String)>) -> Result<Self, String> {
        let reader = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
        let (answered, answers) = mpsc::channel();
        std::thread::spawn(move || {
            // Bytes, not `lines()`: a line that is not UTF-8 must not end the reader (and with
            // it every later answer); only the socket's end does.
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let Ok(message) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(name) = message["event"].as_str() {
                    let reason = message["data"]["reason"].as_str().unwrap_or_default();
                    let _ = events.send((name.to_owned(), reason.to_owned()));
                } else if message.get("QMP").is_none() {
                    let _ = answered.send(message);
                }
            }
        });
        let qmp = Self {
            writer: Arc::new(Mutex::new(stream)),
            answers: Mutex::new(answers),
            next_id: std::sync::atomic::AtomicU64::new(1),
        };
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn clone_for_quit(&self) -> QuitHandle {
        QuitHandle {
            writer: Arc::clone(&self.writer),
        }
    }

    /// Runs one command and returns its `return` value.
    fn execute(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let answers = self.answers.lock().map_err(|_| "QMP poisoned".to_owned())?;
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let mut request = serde_json::json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        {
            let mut writer = self.writer.lock().map_err(|_| "QMP poisoned".to_owned())?;
            writeln!(writer, "{request}").map_err(|e| format!("QMP {command}: {e}"))?;
        }
        let deadline = Instant::now() + COMMAND_BOUND;
        // Answers to earlier commands that timed out, and to `quit`, are not this one's.
        let answer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = answers
                .recv_timeout(left)
                .map_err(|_| format!("QMP {command}: QEMU did not answer"))?;
            if answer["id"] == id {
                break answer;
            }
        };
        if let Some(error) = answer.get("error") {
            return Err(format!(
                "QMP {command}: {}",
                error["desc"].as_str().unwrap_or("failed")
            ));
        }
        Ok(answer["return"].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_carry_the_config_and_firecrackers_own_boot_args() {
        let mode = Mode {
            qemu: "/q/qemu-system-x86_64".into(),
            firmware: "/q/firmware".into(),
        };
        let drive = |path: &'static str, read_only: bool, is_root: bool| DriveSpec {
            path: Path::new(path),
            read_only,
            is_root,
        };
        let spec = MachineSpec {
            kernel: Path::new("/i/vmlinux"),
            initrd: Some(Path::new("/i/initrd.img")),
            boot_args: Some("console=ttyS0 reboot=k panic=1 pci=off"),
            vcpus: 1,
            memory_mib: 1024,
            // The root device listed second still becomes vda.
            drives: vec![
                drive("/i/a,b.img", true, false),
                drive("/i/rootfs.ext4", false, true),
            ],
            mac: "06:fc:00:10:00:02",
            tsc_khz: 2_596_100,
        };
        let args = arguments(&mode, &spec).join(" ");
        assert!(
            args.contains(
                "-append tsc_early_khz=2596100 earlyprintk=serial console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw pci=off"
            ),
            "{args}"
        );
        assert!(args.contains("-smp 1 -m 1024"), "{args}");
        assert!(args.contains("-initrd /i/initrd.img"), "{args}");
        assert!(
            args.contains("id=drive0,file=/i/rootfs.ext4,format=raw,if=none,readonly=off"),
            "{args}"
        );
        assert!(
            args.contains("id=drive1,file=/i/a,,b.img,format=raw,if=none,readonly=on"),
            "{args}"
        );
        assert!(
            args.contains("virtio-net-device,netdev=net0,mac=06:fc:00:10:00:02"),
            "{args}"
        );
        assert!(args.contains("tcg,split-wx=on,tb-size=64"), "{args}");
        assert!(args.starts_with("-M microvm,acpi=on,pic=off "), "{args}");
        assert!(args.ends_with("-no-shutdown -no-reboot"), "{args}");
    }

    #[test]
    fn the_host_tsc_rate_is_plausible_and_repeatable() {
        let first = host_tsc_khz();
        let second = host_tsc_khz();
        assert!((100_000..10_000_000).contains(&first), "{first} kHz");
        assert!(
            first.abs_diff(second) * 100 < first,
            "{first} kHz, then {second} kHz"
        );
    }

    #[test]
    fn the_command_line_follows_firecrackers_rules() {
        let drive = |read_only: bool, is_root: bool| DriveSpec {
            path: Path::new("/d"),
            read_only,
            is_root,
        };
        let spec = |boot_args, drives| MachineSpec {
            kernel: Path::new("/k"),
            initrd: None,
            boot_args,
            vcpus: 1,
            memory_mib: 128,
            drives,
            mac: "06:00:00:00:00:01",
            tsc_khz: 1,
        };
        assert_eq!(
            spec(Some("console=ttyS0"), vec![drive(true, true)]).command_line(),
            "console=ttyS0 root=/dev/vda ro pci=off"
        );
        assert_eq!(
            spec(Some("console=ttyS0"), vec![drive(false, false)]).command_line(),
            "console=ttyS0 pci=off"
        );
        assert!(
            spec(None, vec![])
                .command_line()
                .starts_with("reboot=k panic=1 pci=off nomodules")
        );
    }
}
