//! `fireclaw image fetch` and `image list` end to end, against a loopback HTTP server the test
//! starts: it serves a Firecracker-style S3 listing, a kernel fixture (a minimal ELF64), a root
//! tarball the test builds (an fstab like Ubuntu's, a file owned by uid 1000, a hard link, a
//! binary with a file capability) and a `SHA256SUMS` signed by a key the test makes. The
//! resulting `rootfs.ext4` is inspected with `debugfs`, `dumpe2fs` and `e2fsck`. Building a
//! rootfs from a tarball needs root (owners and capabilities), so those tests are ignored
//! without it; the rest use raw ext4 inputs and run as any user.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/doctor_report.rs"]
mod doctor_report;
#[path = "support/http_server.rs"]
mod http_server;
#[path = "support/kernel_fixture.rs"]
mod kernel_fixture;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use http_server::HttpServer;

const BIN: &str = env!("CARGO_BIN_EXE_fireclaw");
const TARBALL: &str = "ubuntu-24.04-server-cloudimg-amd64-root.tar.xz";
const KERNEL_KEY: &str = "firecracker-ci/v1.16/x86_64/vmlinux-6.1.141";
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const UBUNTU_FSTAB: &str = "LABEL=cloudimg-rootfs\t/\t ext4\tdiscard,errors=remount-ro\t0 1\n\
LABEL=BOOT\t/boot\text4\tdefaults\t0 2\n\
LABEL=UEFI\t/boot/efi\tvfat\tumask=0077\t0 1\n";

fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn sha256(path: &Path) -> String {
    let out = run("sha256sum", &[path.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A vmlinux with every driver a guest needs (the fixture setup's tests use), padded to 64 KiB
/// so a download can be cut.
fn kernel_fixture() -> Vec<u8> {
    let mut elf = kernel_fixture::vmlinux_with_everything();
    let padding = (64 * 1024usize).saturating_sub(elf.len());
    elf.extend((0..padding).map(|i| (i % 251) as u8));
    elf
}

/// A GnuPG home with one signing key, its public keyring exported for `--keyring`.
struct Signer {
    home: tempfile::TempDir,
    keyring: PathBuf,
}

impl Signer {
    fn new(name: &str) -> Self {
        let home = tempfile::Builder::new()
            .prefix("fireclaw-gpg-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let signer = Self {
            keyring: home.path().join("keyring.gpg"),
            home,
        };
        signer.gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            &format!("{name} <test@example.invalid>"),
            "ed25519",
            "sign",
            "never",
        ]);
        let exported = signer.gpg(&["--export"]);
        std::fs::write(&signer.keyring, exported.stdout).unwrap();
        signer
    }

    fn gpg(&self, args: &[&str]) -> Output {
        let output = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--yes", "--pinentry-mode", "loopback"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// An armored detached signature of `data`, as Ubuntu publishes `SHA256SUMS.gpg`.
    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let file = self.home.path().join("data");
        std::fs::write(&file, data).unwrap();
        let sig = self.home.path().join("data.gpg");
        self.gpg(&[
            "--passphrase",
            "",
            "--armor",
            "--detach-sign",
            "-o",
            sig.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        std::fs::read(sig).unwrap()
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        // The agent gpg started for this home only.
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// A root tree like Ubuntu's in miniature, as an xz tarball made by GNU tar with xattrs.
fn root_tarball(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    for sub in ["etc", "home/ubuntu", "usr/bin", "boot/efi"] {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
    }
    std::fs::write(tree.join("etc/fstab"), UBUNTU_FSTAB).unwrap();
    std::fs::write(tree.join("home/ubuntu/notes"), "mine\n").unwrap();
    std::os::unix::fs::chown(tree.join("home/ubuntu/notes"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(tree.join("home/ubuntu"), Some(1000), Some(1000)).unwrap();
    std::fs::write(tree.join("usr/bin/pinger"), b"#!/bin/sh\necho ping\n").unwrap();
    std::fs::set_permissions(
        tree.join("usr/bin/pinger"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    run(
        "setcap",
        &[
            "cap_net_raw+ep",
            tree.join("usr/bin/pinger").to_str().unwrap(),
        ],
    );
    std::fs::hard_link(tree.join("usr/bin/pinger"), tree.join("usr/bin/pinger6")).unwrap();
    std::os::unix::fs::symlink("pinger", tree.join("usr/bin/ping")).unwrap();
    let tar = dir.join("root.tar");
    run(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
            tree.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    // Several threads make a multi-block xz stream, as large real tarballs are.
    run("xz", &["-T2", "--block-size=4KiB", tar.to_str().unwrap()]);
    let xz = dir.join(TARBALL);
    std::fs::rename(dir.join("root.tar.xz"), &xz).unwrap();
    xz
}

/// A small raw ext4 image (mkfs runs as any user on a regular file).
fn ext4_image(dir: &Path, label: &str) -> PathBuf {
    let tree = dir.join(format!("tree-{label}"));
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), label).unwrap();
    let image = dir.join(format!("{label}.ext4"));
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            label,
            "-d",
            tree.to_str().unwrap(),
            image.to_str().unwrap(),
            "8M",
        ],
    );
    image
}

struct Fixture {
    scratch: tempfile::TempDir,
    server: HttpServer,
    signer: Signer,
}

impl Fixture {
    fn new() -> Self {
        let scratch = tempfile::Builder::new()
            .prefix("fireclaw-image-")
            .tempdir()
            .unwrap();
        let bin = scratch.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let firecracker = bin.join("firecracker");
        std::fs::write(
            &firecracker,
            "#!/bin/sh\necho 'Firecracker v1.16.1'\necho\necho 'Supported snapshot versions: v6.0.0'\n",
        )
        .unwrap();
        std::fs::set_permissions(&firecracker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let server = HttpServer::start();
        let listing = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
             xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>spec.ccfc.min</Name>\
             <Prefix>firecracker-ci/v1.16/x86_64/vmlinux-</Prefix><KeyCount>4</KeyCount>\
             <Contents><Key>firecracker-ci/v1.16/x86_64/vmlinux-5.10.239</Key></Contents>\
             <Contents><Key>{KERNEL_KEY}</Key><Size>65536</Size></Contents>\
             <Contents><Key>{KERNEL_KEY}.config</Key></Contents>\
             <Contents><Key>firecracker-ci/v1.16/x86_64/vmlinux-6.1.141-debug</Key></Contents>\
             </ListBucketResult>"
        );
        server.put(
            "/spec/?prefix=firecracker-ci/v1.16/x86_64/vmlinux-&list-type=2",
            listing,
        );
        server.put(&format!("/spec/{KERNEL_KEY}"), kernel_fixture());
        Self {
            scratch,
            server,
            signer: Signer::new("fireclaw test images"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    fn images(&self) -> PathBuf {
        self.path("images")
    }

    /// Serves `tarball` as Ubuntu's, with `SHA256SUMS` (listing `digest` for it, the real
    /// one when `None`) signed by the test key.
    fn serve_ubuntu(&self, tarball: &[u8], digest: Option<&str>) {
        let real = {
            let file = self.path("served.tar.xz");
            std::fs::write(&file, tarball).unwrap();
            sha256(&file)
        };
        let sums = format!(
            "{} *ubuntu-24.04-server-cloudimg-amd64.img\n{} *{TARBALL}\n",
            "0".repeat(64),
            digest.unwrap_or(&real)
        );
        self.server
            .put(&format!("/ubuntu/{TARBALL}"), tarball.to_vec());
        self.server
            .put("/ubuntu/SHA256SUMS.gpg", self.signer.sign(sums.as_bytes()));
        self.server.put("/ubuntu/SHA256SUMS", sums);
    }

    /// `fireclaw image fetch` with the test server as Ubuntu mirror and kernel bucket.
    fn fetch(&self, extra: &[&str]) -> Output {
        let dir = self.images();
        let mirror = self.server.url("/ubuntu/");
        let index = self.server.url("/spec");
        let mut args = vec![
            "image",
            "fetch",
            "--dir",
            dir.to_str().unwrap(),
            "--keyring",
            self.signer.keyring.to_str().unwrap(),
        ];
        if !extra.contains(&"--rootfs") {
            args.extend(["--ubuntu-mirror", mirror.as_str()]);
        }
        if !extra.contains(&"--kernel") {
            args.extend(["--kernel-index", index.as_str()]);
        }
        args.extend(extra);
        self.fireclaw(&args, true)
    }

    fn fireclaw(&self, args: &[&str], with_firecracker: bool) -> Output {
        let path = if with_firecracker {
            format!("{}:{SYSTEM_PATH}", self.path("bin").display())
        } else {
            SYSTEM_PATH.to_owned()
        };
        Command::new(BIN)
            .env_clear()
            .env("PATH", path)
            .env("STATE_ROOT", self.path("state"))
            .env("FC_ROOT", self.path("fc"))
            .env("BASE_IMAGES_DIR", self.images())
            .args(args)
            .output()
            .unwrap()
    }

    /// Every path under the images directory.
    fn image_dir_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.images())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "fireclaw failed: {}{}",
        stdout(output),
        stderr(output)
    );
}

/// A refused fetch: exit 1, one line on stderr naming `needle`, nothing installed.
fn assert_refused(fixture: &Fixture, output: &Output, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("fireclaw: "), "{err}");
    assert!(last.contains(needle), "{last} does not mention {needle}");
    // Nothing at all: not even the lock file this run made.
    let left = fixture.image_dir_entries();
    assert!(left.is_empty(), "left in the images dir: {left:?}");
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = run("debugfs", &["-R", request, image.to_str().unwrap()]);
    stdout(&out)
}

fn manifest(fixture: &Fixture) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture.images().join("fireclaw-images.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
#[ignore = "needs root: sandbox"]
fn the_default_fetch_builds_a_verified_ubuntu_rootfs_and_resumes_a_dropped_kernel() {
    let fixture = Fixture::new();
    let tarball = root_tarball(fixture.scratch.path());
    fixture.serve_ubuntu(&std::fs::read(&tarball).unwrap(), None);
    fixture
        .server
        .cut_once_after(&format!("/spec/{KERNEL_KEY}"), 10_000);
    // A run killed earlier left its staging dir behind; this one removes it.
    std::fs::create_dir_all(fixture.images().join(".fireclaw-image-99999/tree")).unwrap();

    let started = std::time::Instant::now();
    let output = fixture.fetch(&["--json"]);
    assert_ok(&output);
    eprintln!("fetch took {:?}", started.elapsed());
    let err = stderr(&output);
    eprintln!("{err}");
    assert!(err.contains("signature good"), "{err}");
    assert!(err.contains("resumed 1 time"), "{err}");

    // The dropped kernel download was picked up with a range request.
    let kernel_gets: Vec<_> = fixture
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.target.ends_with("vmlinux-6.1.141"))
        .collect();
    assert_eq!(kernel_gets.len(), 2, "{kernel_gets:?}");
    assert_eq!(kernel_gets[1].range.as_deref(), Some("bytes=10000-"));
    let kernel = fixture.images().join("vmlinux");
    assert_eq!(std::fs::read(&kernel).unwrap(), kernel_fixture());

    let image = fixture.images().join("rootfs.ext4");
    run("e2fsck", &["-f", "-n", image.to_str().unwrap()]);
    let header = stdout(&run("dumpe2fs", &["-h", image.to_str().unwrap()]));
    assert!(
        header.contains("Filesystem volume name:   cloudimg-rootfs"),
        "{header}"
    );
    // The fstab: the root line as it was, the /boot and EFI partitions commented out.
    let fstab = debugfs(&image, "cat /etc/fstab");
    assert!(
        fstab.contains("\n#LABEL=BOOT\t/boot\text4\tdefaults\t0 2\n"),
        "{fstab}"
    );
    assert!(
        fstab.starts_with("LABEL=cloudimg-rootfs\t/\t ext4\tdiscard,errors=remount-ro\t0 1\n"),
        "{fstab}"
    );
    assert!(
        fstab.contains("\n#LABEL=UEFI\t/boot/efi\tvfat\tumask=0077\t0 1\n"),
        "{fstab}"
    );
    let notes = debugfs(&image, "stat /home/ubuntu/notes");
    assert!(notes.contains("User:  1000   Group:  1000"), "{notes}");
    let pinger = debugfs(&image, "stat /usr/bin/pinger");
    assert!(pinger.contains("Links: 2"), "{pinger}");
    assert!(pinger.contains("Mode:  0755"), "{pinger}");
    let attributes = debugfs(&image, "ea_list /usr/bin/pinger");
    assert!(attributes.contains("security.capability"), "{attributes}");
    // The image is large enough to work in: its files plus at least 1 GiB.
    assert!(std::fs::metadata(&image).unwrap().len() >= 1 << 30);

    // The manifest records both, with digests of the installed files.
    let manifest = manifest(&fixture);
    let images = manifest["images"].as_array().unwrap();
    let record = |file: &str| images.iter().find(|r| r["file"] == file).unwrap().clone();
    let rootfs = record("rootfs.ext4");
    assert_eq!(rootfs["verification"], "gpg+sha256");
    assert_eq!(rootfs["version"], "Ubuntu 24.04 LTS (noble)");
    assert_eq!(
        rootfs["source"],
        fixture.server.url(&format!("/ubuntu/{TARBALL}"))
    );
    assert_eq!(rootfs["source_sha256"], sha256(&tarball));
    assert_eq!(rootfs["sha256"], sha256(&image));
    let vmlinux = record("vmlinux");
    assert_eq!(
        vmlinux["verification"],
        "sha256 recorded (unverified source)"
    );
    assert_eq!(vmlinux["version"], "6.1.141");
    assert_eq!(vmlinux["sha256"], sha256(&kernel));
    assert_eq!(vmlinux["size"], 65536);
    let fetched_at = vmlinux["fetched_at"].as_str().unwrap();
    assert!(
        fetched_at.len() == 20 && fetched_at.ends_with('Z'),
        "{fetched_at}"
    );
    // --json prints the same records.
    let printed: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed.as_array().unwrap().len(), 2);

    // Nothing else is left: no staging dir (neither this run's nor the stale one).
    assert_eq!(
        fixture.image_dir_entries(),
        [
            ".fireclaw-images.lock",
            "fireclaw-images.json",
            "rootfs.ext4",
            "vmlinux"
        ]
    );
    let list = fixture.fireclaw(&["image", "list"], false);
    assert_ok(&list);
    assert!(stdout(&list).contains("rootfs.ext4: "), "{}", stdout(&list));
    assert!(stdout(&list).contains("version Ubuntu 24.04 LTS (noble), gpg+sha256"));
}

#[test]
fn a_bad_signature_is_refused_before_the_download_and_nothing_is_installed() {
    let fixture = Fixture::new();
    fixture.serve_ubuntu(b"not really a tarball", None);
    let impostor = Signer::new("someone else");
    let sums = format!("{} *{TARBALL}\n", "1".repeat(64));
    fixture
        .server
        .put("/ubuntu/SHA256SUMS.gpg", impostor.sign(sums.as_bytes()));
    fixture.server.put("/ubuntu/SHA256SUMS", sums);
    let output = fixture.fetch(&[]);
    assert_refused(&fixture, &output, "check the signature of");
    assert!(
        !fixture
            .server
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.target.ends_with(".tar.xz")),
        "the tarball was downloaded despite the bad signature"
    );
}

#[test]
fn a_checksum_mismatch_is_refused_and_nothing_is_installed() {
    let fixture = Fixture::new();
    fixture.serve_ubuntu(b"not the tarball SHA256SUMS names", Some(&"ab".repeat(32)));
    let output = fixture.fetch(&[]);
    assert_refused(&fixture, &output, "checksum mismatch");
    // Each pin on its own: the right kernel pin with a wrong rootfs pin, then the reverse.
    let kernel_pin = {
        let file = fixture.path("kernel-for-pin");
        std::fs::write(&file, kernel_fixture()).unwrap();
        sha256(&file)
    };
    let pinned = fixture.fetch(&[
        "--kernel-sha256",
        &kernel_pin,
        "--rootfs-sha256",
        &"ab".repeat(32),
    ]);
    assert_refused(
        &fixture,
        &pinned,
        &format!(
            "checksum mismatch for {}",
            fixture.server.url(&format!("/ubuntu/{TARBALL}"))
        ),
    );
    let pinned = fixture.fetch(&["--kernel-sha256", &"cd".repeat(32)]);
    assert_refused(
        &fixture,
        &pinned,
        &format!(
            "checksum mismatch for {}",
            fixture.server.url(&format!("/spec/{KERNEL_KEY}"))
        ),
    );
}

#[test]
fn unsigned_or_incomplete_checksums_are_refused_and_nothing_is_installed() {
    let fixture = Fixture::new();
    let tarball = b"a tarball the sums do not list".to_vec();
    // SHA256SUMS without its signature proves nothing.
    fixture.serve_ubuntu(&tarball, None);
    fixture.server.fail("/ubuntu/SHA256SUMS.gpg", 404);
    let output = fixture.fetch(&[]);
    assert_refused(
        &fixture,
        &output,
        "has no signature SHA256SUMS.gpg beside it",
    );
    // A good signature over sums that do not name the file.
    let sums = format!("{} *some-other-file.tar.xz\n", "0".repeat(64));
    fixture.server.put("/ubuntu/SHA256SUMS", sums.clone());
    fixture.server.put(
        "/ubuntu/SHA256SUMS.gpg",
        fixture.signer.sign(sums.as_bytes()),
    );
    fixture.server.clear_failure("/ubuntu/SHA256SUMS.gpg");
    let output = fixture.fetch(&[]);
    assert_refused(&fixture, &output, &format!("lists no file named {TARBALL}"));
}

#[test]
fn a_server_that_ignores_ranges_gets_the_download_restarted_whole() {
    let fixture = Fixture::new();
    let image = ext4_image(fixture.scratch.path(), "cloudimg-rootfs");
    fixture
        .server
        .put("/raw/rootfs.ext4", std::fs::read(&image).unwrap());
    fixture.server.cut_once_after("/raw/rootfs.ext4", 300_000);
    fixture.server.ignore_ranges("/raw/rootfs.ext4");
    let url = fixture.server.url("/raw/rootfs.ext4");
    let output = fixture.fetch(&["--rootfs", &url, "--rootfs-sha256", &sha256(&image)]);
    assert_ok(&output);
    let gets = fixture
        .server
        .requests()
        .into_iter()
        .filter(|r| r.target == "/raw/rootfs.ext4" && r.method == "GET")
        .count();
    assert_eq!(gets, 2);
    assert_eq!(
        sha256(&fixture.images().join("rootfs.ext4")),
        sha256(&image)
    );
}

#[test]
fn sigterm_during_a_download_stops_it_and_leaves_nothing_behind() {
    let fixture = Fixture::new();
    let image = ext4_image(fixture.scratch.path(), "cloudimg-rootfs");
    fixture
        .server
        .put("/raw/rootfs.ext4", std::fs::read(&image).unwrap());
    fixture.server.stall_after("/raw/rootfs.ext4", 100_000);
    let url = fixture.server.url("/raw/rootfs.ext4");
    let dir = fixture.images();
    let kernel = fixture.path("vmlinux-6.1.150");
    std::fs::write(&kernel, kernel_fixture()).unwrap();
    let child = Command::new(BIN)
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .args(["image", "fetch", "--dir"])
        .arg(&dir)
        .args(["--kernel", kernel.to_str().unwrap(), "--rootfs", &url])
        .args(["--rootfs-sha256", &sha256(&image)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the rootfs download hangs with part of the file in the staging dir.
    let staging_has_part = || {
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".fireclaw-image-")
                    && e.path()
                        .join("rootfs.download")
                        .metadata()
                        .is_ok_and(|m| m.len() >= 100_000)
            })
    };
    let waited = std::time::Instant::now();
    while !staging_has_part() {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(20),
            "no download began"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill sends a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().unwrap();
    // A shell's status for a command stopped by a signal.
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    let err = stderr(&output);
    // Off a terminal, no control codes: only whole lines.
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.starts_with("fireclaw: ") && l.ends_with("interrupted (SIGTERM)")),
        "{err}"
    );
    // Nothing at all: not even the lock file this run made.
    let left = fixture.image_dir_entries();
    assert!(left.is_empty(), "left in the images dir: {left:?}");
}

#[test]
fn file_urls_and_plain_paths_are_accepted_and_list_shows_them() {
    let fixture = Fixture::new();
    let kernel = fixture.path("vmlinux-6.1.150");
    std::fs::write(&kernel, kernel_fixture()).unwrap();
    let rootfs = ext4_image(fixture.scratch.path(), "cloudimg-rootfs");
    let rootfs_url = format!("file://{}", rootfs.display());
    let pin = sha256(&rootfs);
    let output = fixture.fetch(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--rootfs",
        &rootfs_url,
        "--rootfs-sha256",
        &pin.to_uppercase(),
    ]);
    assert_ok(&output);
    assert_eq!(
        std::fs::read(fixture.images().join("rootfs.ext4")).unwrap(),
        std::fs::read(&rootfs).unwrap()
    );
    let manifest = manifest(&fixture);
    let images = manifest["images"].as_array().unwrap();
    assert_eq!(images[0]["file"], "rootfs.ext4");
    assert_eq!(images[0]["verification"], "sha256 pinned");
    assert_eq!(images[0]["source"], rootfs.to_str().unwrap());
    assert_eq!(images[1]["version"], "6.1.150");
    assert_eq!(images[1]["source"], kernel.to_str().unwrap());
    let list = fixture.fireclaw(&["image", "list", "--json"], false);
    assert_ok(&list);
    let view: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(view["schema"], 1);
    assert_eq!(view["images"][0]["file"], "vmlinux");
    assert_eq!(view["images"][0]["matches_record"], true);
    assert_eq!(view["images"][1]["record"]["verification"], "sha256 pinned");
    // doctor shows where the images came from, and reads the kernel and rootfs as setup will;
    // it also names what a killed fetch left.
    std::fs::create_dir(fixture.images().join(".fireclaw-image-999999")).unwrap();
    let doctor = fixture.fireclaw(&["doctor", "--json"], false);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let check = |name: &str| doctor_report::check_named(&report, name);
    let source = check("base images source");
    assert_eq!(source["status"], "pass", "{source}");
    let detail = source["detail"].as_str().unwrap();
    assert!(
        detail.contains("rootfs.ext4 (sha256 pinned, ") && detail.contains("vmlinux 6.1.150 ("),
        "{detail}"
    );
    assert_eq!(check("base rootfs format")["status"], "pass");
    let leftovers = check("base images leftovers");
    assert_eq!(leftovers["status"], "warn", "{leftovers}");
    assert!(
        leftovers["detail"]
            .as_str()
            .unwrap()
            .starts_with(".fireclaw-image-999999 in "),
        "{leftovers}"
    );
    assert_eq!(check("guest kernel drivers")["status"], "pass");
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_tarball_rootfs_without_root_is_refused_before_any_download() {
    let fixture = Fixture::new();
    let kernel = fixture.path("vmlinux-6.1.150");
    std::fs::write(&kernel, kernel_fixture()).unwrap();
    let images = fixture.images();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(["image", "fetch", "--dir"])
        .arg(&images)
        .args(["--kernel", kernel.to_str().unwrap(), "--rootfs"])
        .arg(
            fixture
                .server
                .url("/ubuntu/ubuntu-24.04-server-cloudimg-amd64-root.tar.xz"),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("needs root"),
        "{}",
        stderr(&output)
    );
    assert!(
        fixture.server.requests().is_empty(),
        "{:?}",
        fixture.server.requests()
    );
}

#[test]
fn an_existing_image_is_kept_without_force_and_replaced_with_it() {
    let fixture = Fixture::new();
    let first = ext4_image(fixture.scratch.path(), "cloudimg-rootfs");
    let second = ext4_image(fixture.scratch.path(), "other-label");
    let fetch = |rootfs: &Path, force: bool| {
        let mut args = vec!["--rootfs", rootfs.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        fixture.fetch(&args)
    };
    assert_ok(&fetch(&first, false));
    let installed = fixture.images().join("rootfs.ext4");
    let before = std::fs::read(&installed).unwrap();
    let manifest_before = manifest(&fixture);

    let refused = fetch(&second, false);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("already exists (use --force to replace it)"));
    assert_eq!(std::fs::read(&installed).unwrap(), before);
    assert_eq!(manifest(&fixture), manifest_before);

    let replaced = fetch(&second, true);
    assert_ok(&replaced);
    // A raw image whose label Ubuntu's fstab would not find is installed with a warning.
    assert!(
        stderr(&replaced).contains("label is 'other-label'"),
        "{}",
        stderr(&replaced)
    );
    assert!(stderr(&replaced).contains("recorded, not verified"));
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&second).unwrap()
    );
    let manifest = manifest(&fixture);
    let rootfs = &manifest["images"][0];
    assert_eq!(rootfs["source"], second.to_str().unwrap());
    assert_eq!(
        rootfs["verification"],
        "sha256 recorded (unverified source)"
    );
}

#[test]
fn a_rootfs_dropped_mid_download_is_resumed_from_where_it_stopped() {
    let fixture = Fixture::new();
    let image = ext4_image(fixture.scratch.path(), "cloudimg-rootfs");
    fixture
        .server
        .put("/raw/rootfs.ext4", std::fs::read(&image).unwrap());
    fixture.server.cut_once_after("/raw/rootfs.ext4", 300_000);
    let url = fixture.server.url("/raw/rootfs.ext4");
    let output = fixture.fetch(&["--rootfs", &url, "--rootfs-sha256", &sha256(&image)]);
    assert_ok(&output);
    let ranges: Vec<_> = fixture
        .server
        .requests()
        .into_iter()
        .filter(|r| r.target == "/raw/rootfs.ext4" && r.method == "GET")
        .map(|r| r.range)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=300000-".to_owned())]);
    assert_eq!(
        sha256(&fixture.images().join("rootfs.ext4")),
        sha256(&image)
    );
}

#[test]
fn http_errors_unknown_formats_and_missing_tools_are_plain_errors() {
    let fixture = Fixture::new();
    let image = ext4_image(fixture.scratch.path(), "cloudimg-rootfs");
    let rootfs = image.to_str().unwrap();

    // No firecracker on PATH: its CI kernel version is unknown.
    let output = fixture.fireclaw(
        &[
            "image",
            "fetch",
            "--dir",
            fixture.images().to_str().unwrap(),
            "--rootfs",
            rootfs,
        ],
        false,
    );
    assert_refused(&fixture, &output, "firecracker is not on PATH");
    assert!(stderr(&output).contains("--kernel"));

    // The kernel bucket answers 500; the listing is not there.
    fixture.server.fail(&format!("/spec/{KERNEL_KEY}"), 500);
    let output = fixture.fetch(&["--rootfs", rootfs]);
    assert_refused(&fixture, &output, "answered HTTP 500");

    // A missing local file, and a file that is no kernel and no rootfs.
    let output = fixture.fetch(&["--kernel", "/nonexistent/vmlinux", "--rootfs", rootfs]);
    assert_refused(
        &fixture,
        &output,
        "the kernel /nonexistent/vmlinux cannot be read: No such file",
    );
    let junk = fixture.path("junk.bin");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let output = fixture.fetch(&["--kernel", junk.to_str().unwrap(), "--rootfs", rootfs]);
    assert_refused(
        &fixture,
        &output,
        "it is not an ELF file; the guest needs an uncompressed x86_64 ELF vmlinux",
    );
    let kernel = fixture.path("vmlinux");
    std::fs::write(&kernel, kernel_fixture()).unwrap();
    let output = fixture.fetch(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--rootfs",
        junk.to_str().unwrap(),
    ]);
    assert_refused(
        &fixture,
        &output,
        "expected an xz or plain root tarball, or an ext4 image",
    );

    // Nothing listens: no network.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let output = fixture.fetch(&[
        "--kernel",
        &format!("http://127.0.0.1:{port}/vmlinux"),
        "--rootfs",
        rootfs,
    ]);
    // Nothing reached the server: it says so, and names the offline way.
    assert_refused(
        &fixture,
        &output,
        &format!(
            "cannot reach 127.0.0.1:{port} (the connection was refused) for http://127.0.0.1:{port}/vmlinux; without a network, give the images as files instead: fireclaw image fetch --kernel FILE --rootfs FILE"
        ),
    );
}

#[test]
fn plain_http_from_another_host_is_refused_before_any_connection() {
    let fixture = Fixture::new();
    for (args, needle) in [
        (
            vec!["--kernel", "http://mirror.example.invalid/vmlinux"],
            "refusing to download the kernel over plain http",
        ),
        (vec!["--kernel-sha256", "zz"], "not a SHA-256 digest"),
        (
            vec!["--rootfs", "ftp://mirror.example.invalid/r.tar.xz"],
            "scheme ftp",
        ),
    ] {
        let output = fixture.fetch(&args);
        assert!(!output.status.success(), "{args:?}");
        assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
        assert!(stderr(&output).contains(needle), "{}", stderr(&output));
        assert!(!fixture.images().exists(), "{args:?} made the images dir");
    }
    assert!(fixture.server.requests().is_empty());
}

#[test]
fn local_inputs_are_checked_before_any_download_and_a_failure_leaves_no_directory() {
    let fixture = Fixture::new();
    // A missing kernel file is named at once: no request, no directory, no lock.
    let output = fixture.fetch(&["--kernel", "/nonexistent/nokernel"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("the kernel /nonexistent/nokernel cannot be read"),
        "{}",
        stderr(&output)
    );
    assert!(fixture.server.requests().is_empty());
    assert!(!fixture.images().exists());
    // A failure after the directory and its lock were made removes both, parents included.
    let kernel = fixture.path("vmlinux-local");
    std::fs::write(&kernel, kernel_fixture()).unwrap();
    let nested = fixture.path("new/parent/images");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/rootfs.ext4", closed.local_addr().unwrap());
    drop(closed);
    let output = fixture.fireclaw(
        &[
            "image",
            "fetch",
            "--dir",
            nested.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--rootfs",
            &url,
            "--rootfs-sha256",
            &"0".repeat(64),
        ],
        false,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(!fixture.path("new").exists(), "{}", stderr(&output));
}

#[test]
#[ignore = "needs root: sandbox"]
fn not_enough_space_is_refused_before_the_download() {
    let fixture = Fixture::new();
    let tarball = root_tarball(fixture.scratch.path());
    // A large tarball by its length: 4 MiB of xz needs far more than the 16 MiB tmpfs.
    let mut big = std::fs::read(&tarball).unwrap();
    big.resize(4 << 20, 0);
    fixture.serve_ubuntu(&big, None);
    std::fs::create_dir_all(fixture.images()).unwrap();
    // A private mount namespace: the tmpfs is seen by this command only.
    let mirror = fixture.server.url("/ubuntu/");
    let index = fixture.server.url("/spec");
    let script = format!(
        "mount -t tmpfs -o size=16m fireclaw-test {dir} && exec {BIN} image fetch --dir {dir} \
         --keyring {keyring} --ubuntu-mirror {mirror} --kernel-index {index}",
        dir = fixture.images().display(),
        keyring = fixture.signer.keyring.display(),
    );
    let output = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env(
            "PATH",
            format!("{}:{SYSTEM_PATH}", fixture.path("bin").display()),
        )
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("not enough space in"), "{err}");
    assert!(err.contains("need ") && err.contains(" available"), "{err}");
    assert!(
        !fixture
            .server
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.target.ends_with(".tar.xz")),
        "downloaded before checking the space"
    );
}

/// A plain user fetching from files it can read into a directory it owns: it works, and no
/// "needs root" is said (only an unreadable file would be an error, and not a root one).
#[test]
#[ignore = "needs root: sandbox"]
fn a_plain_user_fetches_from_readable_files_into_its_own_directory() {
    let dir = tempfile::Builder::new()
        .prefix("fireclaw-plain-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = dir.path().join("vmlinux-6.1.150");
    std::fs::write(&kernel, kernel_fixture()).unwrap();
    let rootfs = ext4_image(dir.path(), "cloudimg-rootfs");
    for file in [&kernel, &rootfs] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::os::unix::fs::chown(&images, Some(65534), Some(65534)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .args(["image", "fetch", "--dir"])
        .arg(&images)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--rootfs")
        .arg(&rootfs)
        .output()
        .unwrap();
    assert_ok(&output);
    for said in ["needs root", "sudo", "os error"] {
        assert!(!stderr(&output).contains(said), "{}", stderr(&output));
    }
    assert_eq!(
        std::fs::read(images.join("rootfs.ext4")).unwrap(),
        std::fs::read(&rootfs).unwrap()
    );
    assert_eq!(
        std::fs::read(images.join("vmlinux")).unwrap(),
        kernel_fixture()
    );
    // Its files are the user's own.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(images.join("rootfs.ext4")).unwrap().uid(),
        65534
    );
}
