//! `fireclaw export`: one instance into a verified, portable archive (`instance::archive`):
//! its disk (read sparsely), kernel and initrd, the settings and secrets that describe the
//! agent, its gateway token, its pinned SSH host key pair and its UUID; never the host's SSH
//! client key, its units, tap, address, port or VMM account, and its logs only when asked.
//!
//! The instance's lock is held throughout, so nothing else changes it meanwhile. A stopped or
//! suspended instance is read as it is (a suspended guest synced before its snapshot, which
//! stays behind: an import always cold-boots). A running one is refused, unless `--pause`:
//! then its guest syncs, the VM is paused, its disk is cloned (a reflink where the filesystem
//! has them, so the pause ends at once, else a sparse copy while paused) and the VM resumed;
//! `fireclaw.json` records the export meanwhile (`exporting`), so a kill in between is named
//! as such. The file is written 0600 through a temporary file beside it, renamed into place
//! only when the stream, every filter and the fsync are done.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use super::instance::{Loaded, lock_and_load};
use super::lifecycle::unit_state;
use crate::faults::crash_point;
use crate::guest::ssh::sudo_command;
use crate::host::archive_stream::{Destination, Recipients, seal};
use crate::host::interrupt;
use crate::host::rootfs_seed::read_file;
use crate::host::sparse::{data_extents, read_extents, reflink, sparse_copy};
use crate::host::systemd::ServiceManager;
use crate::instance::archive::{
    CHECKSUMS, Checksums, DISK, FORMAT, MANIFEST, Manifest, MemberEntry, map_digest_prefix,
};
use crate::instance::images::rfc3339_utc;
use crate::instance::layout::AssetPaths;
use crate::instance::secrets::generate_uuid;
use crate::instance::state::{Exporting, Phase};
use crate::instance::values::InstanceId;
use crate::output::Output;
use crate::settings::Settings;
use crate::store::update_fireclaw_state;

/// Where the guest keeps the host key it serves (what `known_hosts` pins).
const HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";

/// Where an archive goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    File(PathBuf),
    Stdout,
}

/// What `export` is to do.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    pub target: Target,
    pub pause: bool,
    pub with_logs: bool,
    pub recipients: Recipients,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Exported {
    pub id: String,
    pub uuid: String,
    /// `null` for stdout.
    pub file: Option<PathBuf>,
    /// Bytes written (the sealed stream's size).
    pub bytes: u64,
    /// Bytes of the disk's data that travelled (its holes did not).
    pub disk_data_bytes: u64,
    pub disk_logical_bytes: u64,
    pub encrypted: bool,
    /// How long the VM was paused (`--pause` of a running instance), in milliseconds.
    pub pause_ms: Option<u64>,
    /// Whether the paused disk was cloned by reflink (`false`: copied while paused).
    pub reflinked: Option<bool>,
}

/// A member ready to stream: its name, where its bytes come from, and its entry.
struct Member {
    entry: MemberEntry,
    source: Source,
}

enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
    Disk(PathBuf),
}

/// The file the archive is written to: its final name reserved at once (created with
/// O_EXCL|O_NOFOLLOW, so an existing file or a link there is refused), the stream written to a
/// temporary file beside it that replaces it when complete; both go again on any failure.
struct OutputFile {
    target: PathBuf,
    temp: PathBuf,
    done: bool,
}

fn create_exclusive(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl OutputFile {
    fn reserve(target: &Path) -> Result<(Self, File)> {
        let name = target
            .file_name()
            .with_context(|| format!("{} names no file", target.display()))?;
        create_exclusive(target).map_err(|error| match error.kind() {
            io::ErrorKind::AlreadyExists => anyhow!(
                "{} already exists; export never overwrites a file (name another with --output)",
                target.display()
            ),
            _ => anyhow::Error::from(error).context(format!("create {}", target.display())),
        })?;
        let temp = target.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = match create_exclusive(&temp) {
            Ok(file) => file,
            Err(error) => {
                let _ = std::fs::remove_file(target);
                return Err(
                    anyhow::Error::from(error).context(format!("create {}", temp.display()))
                );
            }
        };
        Ok((
            Self {
                target: target.to_owned(),
                temp,
                done: false,
            },
            file,
        ))
    }

    /// fsync the stream, rename it over the reserved name, fsync the directory.
    fn commit(mut self) -> Result<u64> {
        let file =
            File::open(&self.temp).with_context(|| format!("open {}", self.temp.display()))?;
        file.sync_all()
            .with_context(|| format!("sync {}", self.temp.display()))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::rename(&self.temp, &self.target).with_context(|| {
            format!(
                "rename {} to {}",
                self.temp.display(),
                self.target.display()
            )
        })?;
        if let Some(dir) = self.target.parent()
            && let Ok(dir) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = dir.sync_all();
        }
        self.done = true;
        Ok(bytes)
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
            let _ = std::fs::remove_file(&self.target);
        }
    }
}

/// Refuses what cannot be exported, in one line each, before anything changes.
fn check_exportable(
    settings: &Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
    pause: bool,
) -> Result<bool> {
    let id = &loaded.id;
    let Some(state) = &loaded.state else {
        bail!(
            "instance '{id}' was made by fireclaw 0.2.0 and has no fireclaw.json yet; adopt it first with: fireclaw adopt {id}"
        );
    };
    if state.phase < Phase::Provisioned {
        bail!(
            "instance '{id}' was never fully provisioned (phase {}); finish it with: fireclaw provision {id}, or remove it with: fireclaw destroy {id} --force",
            state.phase
        );
    }
    if state
        .suspended
        .as_ref()
        .is_some_and(|s| s.loading_since.is_some())
    {
        bail!(
            "a snapshot of instance '{id}' is being loaded (or its last load did not finish); let its resume finish (fireclaw resume {id}) before exporting it"
        );
    }
    let running = unit_state(services, &loaded.units.vm)?.is_active();
    if running && state.suspended.is_none() && !pause {
        bail!(
            "instance '{id}' is running, and its disk would change while it is read: stop it (fireclaw stop {id}), suspend it (fireclaw suspend {id}), or export a crash-consistent copy of it running with --pause"
        );
    }
    // A VM a suspend or another export left paused is no state to export from.
    if running && super::network::vm_paused(settings, id) {
        bail!(
            "the VM of instance '{id}' is paused, left so by an interrupted suspend or export; continue it first with: fireclaw resume {id}"
        );
    }
    Ok(running && state.suspended.is_none())
}

/// Exports one instance.
pub fn export(
    settings: &Settings,
    id: &InstanceId,
    spec: &ExportSpec,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<Exported> {
    let (_lock, mut loaded) = lock_and_load(settings, id, output)?;
    if recover_cut_short(settings, &loaded, services, output)?.is_some() {
        loaded = super::instance::load(settings, id)?;
    }
    let running = check_exportable(settings, &loaded, services, spec.pause)?;
    if spec.target == Target::Stdout {
        use std::io::IsTerminal;
        if io::stdout().is_terminal() {
            bail!(
                "stdout is a terminal, and an archive is binary: give --output FILE, or send it into a pipe or a file"
            );
        }
    }
    let (reserved, file) = match &spec.target {
        Target::File(path) => {
            let (reserved, file) = OutputFile::reserve(path)?;
            (Some(reserved), Some(file))
        }
        Target::Stdout => (None, None),
    };
    // The UUID, made now for an instance older than it.
    let uuid = match loaded.state.as_ref().and_then(|s| s.uuid.clone()) {
        Some(uuid) => uuid,
        None => {
            let uuid = generate_uuid()?;
            update_fireclaw_state(&loaded.paths, |state| state.uuid = Some(uuid.clone()))?;
            uuid
        }
    };
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let mut pause_ms = None;
    let mut reflinked = None;
    // The disk to read: the instance's own, or a clone made while its VM was paused.
    let clone = clone_path(&assets);
    let _ = std::fs::remove_file(&clone);
    let disk = if running {
        let (took, by_reflink) = clone_paused(settings, &loaded, &assets, &clone, output)?;
        pause_ms = Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        reflinked = Some(by_reflink);
        output.progress(&format!(
            "{id}: the VM was paused for {:.1} s ({})",
            took.as_secs_f64(),
            if by_reflink {
                "its disk cloned by reflink"
            } else {
                "its disk copied: this filesystem has no reflinks"
            }
        ));
        clone.clone()
    } else {
        assets.rootfs.clone()
    };
    let result = (|| -> Result<(u64, u64)> {
        let members = members(&loaded, &assets, &disk, spec.with_logs)?;
        let manifest = Manifest {
            format: FORMAT,
            made_by: format!("fireclaw {}", env!("CARGO_PKG_VERSION")),
            id: id.to_string(),
            uuid: uuid.clone(),
            source_host: crate::host::probe::hostname(),
            created_at: rfc3339_utc(SystemTime::now()),
            members: members.iter().map(|m| m.entry.clone()).collect(),
        };
        let disk_entry = members
            .iter()
            .find(|m| m.entry.name == DISK)
            .map(|m| (m.entry.size, m.entry.logical_size.unwrap_or(0)))
            .unwrap_or_default();
        let destination = match file {
            Some(file) => Destination::File(file),
            None => Destination::Stdout,
        };
        let mut sealer = seal(destination, &spec.recipients)?;
        write_archive(&mut sealer, &manifest, &members, id, output)?;
        crash_point("export:streamed");
        sealer.finish()?;
        Ok(disk_entry)
    })();
    let _ = std::fs::remove_file(&clone);
    let (disk_data_bytes, disk_logical_bytes) = result?;
    let bytes = match reserved {
        Some(reserved) => reserved.commit()?,
        None => 0,
    };
    Ok(Exported {
        id: id.to_string(),
        uuid,
        file: match &spec.target {
            Target::File(path) => Some(path.clone()),
            Target::Stdout => None,
        },
        bytes,
        disk_data_bytes,
        disk_logical_bytes,
        encrypted: !spec.recipients.is_empty(),
        pause_ms,
        reflinked,
    })
}

/// `--pause`: flush the guest, record the export, pause the VM, clone its disk, resume it,
/// drop the record. The VM is resumed on every path out (an error, a Ctrl-C); only a kill
/// leaves it paused, with the record that names it.
fn clone_paused(
    settings: &Settings,
    loaded: &Loaded,
    assets: &AssetPaths,
    clone: &Path,
    output: &mut Output<'_>,
) -> Result<(Duration, bool)> {
    let id = &loaded.id;
    let api = super::network::api(settings, id, Duration::from_secs(10))?;
    api.instance_info()
        .with_context(|| format!("reach the VMM of instance '{id}'"))?;
    output.progress(&format!("{id}: flushing the guest's file systems"));
    if let Err(error) = loaded
        .quick_ssh(Duration::from_secs(5))
        .run(&sudo_command(&["timeout", "30", "sync"]), b"")
    {
        output.warn(&format!(
            "instance '{id}': the guest did not flush its file systems ({}); the copy holds what its disk had",
            crate::output::error_chain(&error)
        ));
    }
    interrupt::check()?;
    update_fireclaw_state(&loaded.paths, |state| {
        state.exporting = Some(Exporting {
            since: crate::host::snapshot::unix_now_secs(),
            pid: std::process::id(),
        });
    })?;
    let began = Instant::now();
    api.pause()
        .with_context(|| format!("pause the VM of instance '{id}'"))?;
    crash_point("export:paused");
    let cloned = (|| -> Result<bool> {
        if reflink(&assets.rootfs, clone)
            .with_context(|| format!("clone {}", assets.rootfs.display()))?
        {
            return Ok(true);
        }
        sparse_copy(&assets.rootfs, clone)
            .with_context(|| format!("copy {} while its VM is paused", assets.rootfs.display()))?;
        Ok(false)
    })();
    crash_point("export:cloned");
    let resumed = api
        .resume()
        .with_context(|| format!("resume the VM of instance '{id}'"));
    let took = began.elapsed();
    if resumed.is_ok() {
        update_fireclaw_state(&loaded.paths, |state| state.exporting = None)?;
    }
    resumed?;
    Ok((took, cloned?))
}

/// The disk clone an export of a running instance reads, beside the disk.
fn clone_path(assets: &AssetPaths) -> PathBuf {
    assets.images.join(".export-rootfs.ext4")
}

/// How `stop`, `resume` and `doctor` name a VM an `export --pause` left paused when it was
/// killed, rather than calling it a suspend cut short.
pub fn cut_short_words(exporting: &Exporting) -> String {
    format!(
        "an export (fireclaw export --pause, process {}, begun {}) was cut short while it copied the disk",
        exporting.pid,
        rfc3339_utc(SystemTime::UNIX_EPOCH + Duration::from_secs(exporting.since))
    )
}

/// After a killed `export --pause`: continues its VM when it is still paused, removes the disk
/// clone, and clears the record. Returns the record it cleared (nothing when there was none).
/// The caller holds the instance lock, so no export of this instance is live.
pub fn recover_cut_short(
    settings: &Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<Option<Exporting>> {
    let Some(exporting) = loaded.state.as_ref().and_then(|s| s.exporting.clone()) else {
        return Ok(None);
    };
    let id = &loaded.id;
    let running = unit_state(services, &loaded.units.vm)?.is_active();
    if running && super::network::vm_paused(settings, id) {
        output.warn(&format!(
            "instance '{id}': {}, and left its VM paused; continuing it",
            cut_short_words(&exporting)
        ));
        super::network::api(settings, id, Duration::from_secs(10))?
            .resume()
            .with_context(|| format!("resume the VM of instance '{id}'"))?;
    }
    let clone = clone_path(&AssetPaths::new(&settings.paths.fc_root, id));
    match std::fs::remove_file(&clone) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", clone.display())),
    }
    update_fireclaw_state(&loaded.paths, |state| state.exporting = None)?;
    Ok(Some(exporting))
}

/// The members in the order they travel: the state files, the host key, the disk, the boot
/// files, the logs when asked, the checksums last (its size is known ahead: a digest is 64
/// hex digits whatever it is).
fn members(
    loaded: &Loaded,
    assets: &AssetPaths,
    disk: &Path,
    with_logs: bool,
) -> Result<Vec<Member>> {
    let id = &loaded.id;
    let paths = &loaded.paths;
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("read {}", path.display()));
    let mut members = vec![
        bytes_member("state/env", read(&paths.env)?),
        bytes_member("state/provision.vars", read(&paths.vars)?),
        bytes_member("state/token", read(&paths.token)?),
        bytes_member("state/fireclaw.json", read(&paths.fireclaw_json)?),
    ];
    let (private, public) = host_key(assets, disk)
        .with_context(|| format!("read the SSH host key of instance '{id}'"))?;
    members.push(bytes_member("state/ssh_host_ed25519_key", private));
    members.push(bytes_member("state/ssh_host_ed25519_key.pub", public));
    let file = File::open(disk).with_context(|| format!("open {}", disk.display()))?;
    let (extents, logical) =
        data_extents(&file).with_context(|| format!("map the data of {}", disk.display()))?;
    members.push(Member {
        entry: MemberEntry {
            name: DISK.to_owned(),
            size: extents.iter().map(|[_, length]| length).sum(),
            logical_size: Some(logical),
            extents: Some(extents),
        },
        source: Source::Disk(disk.to_owned()),
    });
    members.push(file_member("boot/vmlinux", &assets.kernel)?);
    if assets.initrd.is_file() {
        members.push(file_member("boot/initrd.img", &assets.initrd)?);
    }
    if with_logs {
        members.push(file_member("logs/console.log", &assets.console_log)?);
        let vmm_log = if assets.vmm_log.is_file() {
            &assets.vmm_log
        } else {
            &assets.firecracker_log
        };
        if vmm_log.is_file() {
            members.push(file_member("logs/firecracker.log", vmm_log)?);
        }
    }
    let placeholder = Checksums {
        sha256: members
            .iter()
            .map(|m| m.entry.name.clone())
            .chain([MANIFEST.to_owned()])
            .map(|name| (name, "0".repeat(64)))
            .collect(),
    };
    members.push(Member {
        entry: plain_entry(CHECKSUMS, placeholder.render().len() as u64),
        source: Source::Bytes(Vec::new()),
    });
    Ok(members)
}

fn plain_entry(name: &str, size: u64) -> MemberEntry {
    MemberEntry {
        name: name.to_owned(),
        size,
        logical_size: None,
        extents: None,
    }
}

fn bytes_member(name: &str, bytes: Vec<u8>) -> Member {
    Member {
        entry: plain_entry(name, bytes.len() as u64),
        source: Source::Bytes(bytes),
    }
}

fn file_member(name: &str, path: &Path) -> Result<Member> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("read {}", path.display()))?
        .len();
    Ok(Member {
        entry: plain_entry(name, size),
        source: Source::File(path.to_owned()),
    })
}

/// The host key pair the guest serves: from its disk (what the guest really has, for an
/// instance 0.2.0 made as for one of fireclaw's), else from the instance's user-data.
fn host_key(assets: &AssetPaths, disk: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let private = read_file(disk, HOST_KEY)?;
    let public = read_file(disk, &format!("{HOST_KEY}.pub"))?;
    if let (Some(private), Some(public)) = (private, public) {
        return Ok((private, public));
    }
    let user_data = std::fs::read_to_string(&assets.user_data)
        .with_context(|| format!("read {}", assets.user_data.display()))?;
    let (private, public) =
        crate::render::cloud_init::host_key_of(&user_data).with_context(|| {
            format!(
                "the guest's disk has no {HOST_KEY} and {} holds none either",
                assets.user_data.display()
            )
        })?;
    Ok((private.into_bytes(), public.into_bytes()))
}

/// Streams the tar: the manifest, each member with its digest taken as it passes, the
/// checksums last; a progress line as the disk goes.
fn write_archive(
    sink: &mut dyn Write,
    manifest: &Manifest,
    members: &[Member],
    id: &InstanceId,
    output: &mut Output<'_>,
) -> Result<()> {
    let mut builder = tar::Builder::new(sink);
    builder.mode(tar::HeaderMode::Deterministic);
    let rendered = manifest.render();
    append(&mut builder, MANIFEST, &rendered)?;
    let mut checksums = Checksums::default();
    // The manifest is covered too: what import reads first is checked like the rest.
    checksums.sha256.insert(
        MANIFEST.to_owned(),
        hex(ring::digest::digest(&ring::digest::SHA256, &rendered).as_ref()),
    );
    let mut progress = Progress::new(id, members.iter().map(|m| m.entry.size).sum());
    for member in members {
        interrupt::check()?;
        let entry = &member.entry;
        if entry.name == CHECKSUMS {
            let bytes = checksums.render();
            if bytes.len() as u64 != entry.size {
                bail!("internal: the checksums member is not the size the manifest says");
            }
            append(&mut builder, CHECKSUMS, &bytes)?;
            continue;
        }
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let header = header(&entry.name, entry.size)?;
        match &member.source {
            Source::Bytes(bytes) => {
                digest.update(bytes);
                builder
                    .append(&header, bytes.as_slice())
                    .with_context(|| format!("write {} into the archive", entry.name))?;
            }
            Source::File(path) => {
                let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
                let mut reader = Counted {
                    inner: file.take(entry.size),
                    digest: &mut digest,
                    progress: &mut progress,
                    output,
                };
                builder
                    .append(&header, &mut reader)
                    .with_context(|| format!("write {} into the archive", entry.name))?;
            }
            Source::Disk(path) => {
                let extents = entry.extents.clone().unwrap_or_default();
                digest.update(&map_digest_prefix(
                    &extents,
                    entry.logical_size.unwrap_or(0),
                ));
                let mut file =
                    File::open(path).with_context(|| format!("open {}", path.display()))?;
                let mut data = ExtentReader::new(&mut file, extents);
                let mut reader = Counted {
                    inner: &mut data,
                    digest: &mut digest,
                    progress: &mut progress,
                    output,
                };
                builder
                    .append(&header, &mut reader)
                    .with_context(|| format!("write {} into the archive", entry.name))?;
            }
        }
        checksums
            .sha256
            .insert(entry.name.clone(), hex(digest.finish().as_ref()));
    }
    builder.finish().context("end the archive")?;
    output.wait_done(&format!("{id}: {} exported", human(progress.done)));
    Ok(())
}

fn header(name: &str, size: u64) -> Result<tar::Header> {
    let mut header = tar::Header::new_gnu();
    header
        .set_path(name)
        .with_context(|| format!("name {name} in the archive"))?;
    header.set_size(size);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

fn append<W: Write>(builder: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    let header = header(name, bytes.len() as u64)?;
    builder
        .append(&header, bytes)
        .with_context(|| format!("write {name} into the archive"))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn human(bytes: u64) -> String {
    crate::instance::images::human_bytes(bytes)
}

/// The extents of a file, one after another, as one stream.
struct ExtentReader<'a> {
    file: &'a mut File,
    extents: std::collections::VecDeque<[u64; 2]>,
    buffer: Vec<u8>,
    at: usize,
}

impl<'a> ExtentReader<'a> {
    fn new(file: &'a mut File, extents: Vec<[u64; 2]>) -> Self {
        Self {
            file,
            extents: extents.into(),
            buffer: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buffer.len() {
            let Some([offset, length]) = self.extents.pop_front() else {
                return Ok(0);
            };
            // One extent at a time, at most 8 MiB of it in memory.
            let chunk = length.min(8 << 20);
            if chunk < length {
                self.extents.push_front([offset + chunk, length - chunk]);
            }
            self.buffer.clear();
            read_extents(self.file, &[[offset, chunk]], &mut self.buffer, &mut |_| {})?;
            self.at = 0;
        }
        let n = out.len().min(self.buffer.len() - self.at);
        out[..n].copy_from_slice(&self.buffer[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A member's bytes on their way: digested, counted, shown.
struct Counted<'a, 'o, R> {
    inner: R,
    digest: &'a mut ring::digest::Context,
    progress: &'a mut Progress,
    output: &'a mut Output<'o>,
}

impl<R: Read> Read for Counted<'_, '_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if interrupt::check().is_err() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        let n = self.inner.read(out)?;
        self.digest.update(&out[..n]);
        self.progress.add(n as u64, self.output);
        Ok(n)
    }
}

/// Bytes and rate, on the live line (off a terminal, a line every 10 s).
struct Progress {
    id: String,
    total: u64,
    done: u64,
    began: Instant,
    shown: Instant,
}

impl Progress {
    fn new(id: &InstanceId, total: u64) -> Self {
        Self {
            id: id.to_string(),
            total,
            done: 0,
            began: Instant::now(),
            shown: Instant::now(),
        }
    }

    fn add(&mut self, bytes: u64, output: &mut Output<'_>) {
        self.done += bytes;
        if self.shown.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.shown = Instant::now();
        let rate = self.done as f64 / self.began.elapsed().as_secs_f64().max(0.001);
        output.tick(&format!(
            "{}: exporting, {} of {} read ({}/s)",
            self.id,
            human(self.done),
            human(self.total),
            human(rate as u64)
        ));
    }
}

/// What `--all` did for one instance.
#[derive(Debug, serde::Serialize)]
pub struct AllResult {
    pub id: String,
    #[serde(flatten)]
    pub exported: Option<Exported>,
    pub error: Option<String>,
    /// Older archives of this id removed by `--keep`.
    pub removed: Vec<PathBuf>,
}

/// `export --all`: each instance into `dir` as `<id>-<UTC time>.fireclaw`, one after another;
/// a failure is reported and the rest still done; `keep` newest archives of each id stay.
pub fn export_all(
    settings: &Settings,
    dir: &Path,
    keep: Option<usize>,
    spec_of: &dyn Fn(PathBuf) -> ExportSpec,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<Vec<AllResult>> {
    let meta = std::fs::metadata(dir).with_context(|| format!("read {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let ids: Vec<InstanceId> = crate::store::scan_instances(&settings.paths.state_root)?
        .into_iter()
        .filter(|s| s.name != crate::instance::baked::BUILDER_ID)
        .filter_map(|s| s.name.parse().ok())
        .collect();
    let mut results = Vec::new();
    for id in ids {
        interrupt::check()?;
        let name = crate::instance::archive::backup_file_name(
            id.as_str(),
            &rfc3339_utc(SystemTime::now()),
        );
        let spec = spec_of(dir.join(name));
        match export(settings, &id, &spec, services, output) {
            Ok(exported) => {
                let removed = keep
                    .map(|keep| prune_backups(dir, id.as_str(), keep))
                    .unwrap_or_default();
                results.push(AllResult {
                    id: id.to_string(),
                    exported: Some(exported),
                    error: None,
                    removed,
                });
            }
            Err(error) => {
                let text = crate::output::error_chain(error.as_ref());
                output.warn(&format!("instance '{id}' was not exported: {text}"));
                results.push(AllResult {
                    id: id.to_string(),
                    exported: None,
                    error: Some(text),
                    removed: Vec::new(),
                });
            }
        }
    }
    Ok(results)
}

/// Removes all but the `keep` newest archives of `id` in `dir` (their names sort by time),
/// and first what killed exports of `id` left there: a `.NAME.partial-PID` of a process gone,
/// and the empty NAME it reserved. Neither counts as an archive.
fn prune_backups(dir: &Path, id: &str, keep: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let all: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    let mut removed = Vec::new();
    for name in &all {
        let Some((backup, pid)) = name
            .strip_prefix('.')
            .and_then(|rest| rest.rsplit_once(".partial-"))
        else {
            continue;
        };
        let alive = pid
            .parse::<i32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if alive || !crate::instance::archive::is_backup_of(backup, id) {
            continue;
        }
        for left in [dir.join(name), dir.join(backup)] {
            let empty =
                left == dir.join(name) || std::fs::metadata(&left).is_ok_and(|m| m.len() == 0);
            if empty && std::fs::remove_file(&left).is_ok() {
                removed.push(left);
            }
        }
    }
    let mut names: Vec<String> = all
        .into_iter()
        .filter(|name| crate::instance::archive::is_backup_of(name, id))
        .filter(|name| dir.join(name).exists())
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for name in names.into_iter().take(excess) {
        let path = dir.join(&name);
        if std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_of_one_id_and_clears_what_killed_exports_left() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "a-2026-12-01T010000Z.fireclaw",
            "a-2026-12-02T010000Z.fireclaw",
            "a-2026-12-03T010000Z.fireclaw",
            "ab-2026-12-01T010000Z.fireclaw",
            "a-notes.txt",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        // A killed export: its empty reserved name and its partial stream, its process gone.
        let killed = "a-2026-12-04T010000Z.fireclaw";
        std::fs::write(dir.path().join(killed), b"").unwrap();
        let partial = format!(".{killed}.partial-999999999");
        std::fs::write(dir.path().join(&partial), b"half").unwrap();
        // A live export's partial (this process) stays, and so does its reserved name.
        let live = "a-2026-12-05T010000Z.fireclaw";
        std::fs::write(dir.path().join(live), b"").unwrap();
        let live_partial = format!(".{live}.partial-{}", std::process::id());
        std::fs::write(dir.path().join(&live_partial), b"going").unwrap();

        let mut removed: Vec<String> = prune_backups(dir.path(), "a", 2)
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        removed.sort();
        let mut expected = vec![
            partial.clone(),
            killed.to_owned(),
            "a-2026-12-01T010000Z.fireclaw".to_owned(),
            "a-2026-12-02T010000Z.fireclaw".to_owned(),
        ];
        expected.sort();
        assert_eq!(removed, expected);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut wanted = vec![
            "a-2026-12-03T010000Z.fireclaw".to_owned(),
            live.to_owned(),
            live_partial,
            "ab-2026-12-01T010000Z.fireclaw".to_owned(),
            "a-notes.txt".to_owned(),
        ];
        wanted.sort();
        assert_eq!(left, wanted);
    }
}
