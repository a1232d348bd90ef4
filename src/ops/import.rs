//! `fireclaw import`: an instance archive (`instance::archive`) rebuilt as an instance of this
//! host. The archive is untrusted input that root acts on: only the allow-listed member names
//! (after PAX and GNU long names are applied), each once, in the manifest's order, regular
//! files only, each read to exactly its declared size and every size capped; room for them is
//! checked before anything is unpacked; the manifest is read whole first and bounded; the
//! trailing checksums are checked before anything is committed, and the filters' exit status
//! (a truncated zstd or age stream) before that. Every setting passes setup's own validation,
//! and nothing host-specific is taken from it: the id must suit this host, and the address,
//! MAC, port, tap, API socket, VMM account, baked-image record and suspended state are derived
//! here as setup derives them (the private-egress allowlist is kept only when asked).
//!
//! The guest comes up as this host's: with its new address and MAC (a new seed, and a
//! cloud-init drop-in that renders the network at every boot, since its instance id stays),
//! this host's client key as its only authorized key, and its own pinned host key, token,
//! UUID and data. The id, address, port and VMM account are reserved under the allocation lock
//! like setup's, the instance recorded in phase `importing` and committed by renames: the
//! disk into its place, then `fireclaw.json` at `provisioned`. A kill between leaves phase
//! `importing`, which the next import or `host cleanup` removes and `doctor` names. One agent
//! never runs twice: an import whose UUID or id exists here is refused, and `--start` refuses
//! a Telegram bot token another instance here uses.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::install::{Imported, Origin, boot_media, install_from};
use super::lifecycle::{Waits, bring_up};
use super::network::{HostSteps, HostSystem};
use super::teardown::teardown_instance;
use super::timing::Stopwatch;
use crate::faults::crash_point;
use crate::host::archive_stream::{Opener, Source, open};
use crate::host::interrupt;
use crate::host::systemd::ServiceManager;
use crate::instance::archive::{
    CHECKSUMS, CHECKSUMS_CAP, Checksums, DISK, MANIFEST, MANIFEST_CAP, Manifest, MemberEntry,
    cap_of, map_digest_prefix,
};
use crate::instance::layout::{AssetPaths, StatePaths, default_api_sock};
use crate::instance::secrets::{host_key_from_openssh, is_uuid};
use crate::instance::spec::{BaseImages, ProviderKeys, SetupSpec, TelegramSpec};
use crate::instance::state::{EnvFile, FireclawState, GatewayToken, Phase, VarsFile, parse_flag};
use crate::instance::timing::TimedVerb;
use crate::instance::values::{InstanceId, PrivateEgress, Secret, escaped};
use crate::output::Output;
use crate::render::artifacts::HostTools;
use crate::settings::Settings;
use crate::store::{lock_file, read_fireclaw_state, scan_instances};

/// What `import` is to do.
pub struct ImportSpec {
    pub input: Input,
    pub identity: Option<PathBuf>,
    pub keep_private_egress: bool,
    pub start: bool,
    pub waits: Waits,
}

/// Where an archive comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    File(PathBuf),
    Stdin,
}

/// Staging dirs under `FC_ROOT` (a dot name: no instance can have it).
const STAGING_PREFIX: &str = ".import-";
/// What may follow the last member: the tar's end, zeros only.
const TAIL_CAP: u64 = 64 << 10;
/// Room kept free beyond what the members need.
const SPACE_MARGIN: u64 = 256 << 20;

/// The archive's state files, small enough to keep in memory, and where its large files were
/// staged (nothing for `--check`).
#[derive(Default)]
struct Unpacked {
    state: std::collections::BTreeMap<String, Vec<u8>>,
    staged: std::collections::BTreeMap<String, PathBuf>,
}

/// What `--check` found, or what an import made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub id: String,
    pub uuid: String,
    pub made_by: String,
    pub source_host: String,
    pub created_at: String,
    pub encrypted: bool,
    pub members: Vec<MemberEntry>,
    /// The instance as this host made it (not for `--check`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub started: bool,
}

/// Opens the input with its filters.
fn open_input(spec: &ImportSpec) -> Result<Opener> {
    let source = match &spec.input {
        Input::File(path) => Source::File(
            File::open(path).with_context(|| format!("open the archive {}", path.display()))?,
        ),
        Input::Stdin => Source::Stdin,
    };
    Ok(open(source, spec.identity.as_deref())?)
}

/// Reads and verifies the whole archive. `before_unpack` runs once the manifest is known and
/// before any member is written: it refuses an archive this host cannot take, and gives the
/// dir its large members go to (`None`: `--check`, which keeps nothing).
fn read_archive(
    opener: &mut Opener,
    before_unpack: &mut dyn FnMut(&Manifest) -> Result<Option<PathBuf>>,
    output: &mut Output<'_>,
) -> Result<(Manifest, Unpacked)> {
    let mut archive = tar::Archive::new(&mut *opener);
    let mut entries = archive.entries().context("read the archive")?;
    let refuse = |what: String| anyhow!("the archive is refused: {what}");
    // The manifest, whole and bounded, first.
    let mut first = entries
        .next()
        .ok_or_else(|| refuse("it is empty".into()))?
        .map_err(|e| refuse(format!("it cannot be read as tar ({e})")))?;
    check_entry(&first, MANIFEST, MANIFEST_CAP).map_err(refuse)?;
    let mut bytes = Vec::new();
    (&mut first)
        .take(MANIFEST_CAP)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(format!("its manifest cannot be read ({e})")))?;
    drop(first);
    let manifest = Manifest::parse(&bytes).map_err(|e| refuse(e.to_string()))?;
    let stage = before_unpack(&manifest)?;
    let stage = stage.as_deref();
    let mut unpacked = Unpacked::default();
    let mut digests = std::collections::BTreeMap::from([(
        MANIFEST.to_owned(),
        crate::ops::export::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()),
    )]);
    let mut seen = BTreeSet::from([MANIFEST.to_owned()]);
    let mut checksums = None;
    for expected in &manifest.members {
        interrupt::check()?;
        let mut entry = match entries.next() {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(refuse(format!("it ends early or is damaged ({e})"))),
            None => {
                return Err(refuse(format!(
                    "it ends before its member '{}' (truncated?)",
                    expected.name
                )));
            }
        };
        let name = entry_name(&entry).map_err(refuse)?;
        if cap_of(&name).is_none() {
            return Err(refuse(format!(
                "it holds '{}', which no archive of fireclaw holds",
                escaped(&name)
            )));
        }
        if !seen.insert(name.clone()) {
            return Err(refuse(format!("it holds the member '{name}' twice")));
        }
        if name != expected.name {
            return Err(refuse(if manifest.member(&name).is_some() {
                format!(
                    "it holds '{name}' where its manifest lists '{}'",
                    expected.name
                )
            } else {
                format!("it holds '{name}', which its manifest does not list")
            }));
        }
        let cap = cap_of(&name).unwrap_or(0);
        check_entry(&entry, &name, cap).map_err(refuse)?;
        let declared = entry.header().size().unwrap_or(u64::MAX);
        if declared != expected.size {
            return Err(refuse(format!(
                "its member '{name}' holds {declared} bytes where its manifest says {}",
                expected.size
            )));
        }
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut limited = (&mut entry).take(expected.size);
        if name == CHECKSUMS {
            let mut bytes = Vec::new();
            limited
                .take(CHECKSUMS_CAP)
                .read_to_end(&mut bytes)
                .map_err(|e| refuse(format!("its checksums cannot be read ({e})")))?;
            checksums = Some(Checksums::parse(&bytes).map_err(|e| refuse(e.to_string()))?);
            continue;
        }
        let mut progress = |bytes: &[u8]| digest.update(bytes);
        let read = if let Some(extents) = &expected.extents {
            let logical = expected.logical_size.unwrap_or(0);
            progress(&map_digest_prefix(extents, logical));
            match stage {
                Some(dir) => {
                    let path = dir.join("rootfs.ext4");
                    let mut file = create_staged(&path)?;
                    crate::host::sparse::write_extents(
                        &mut limited,
                        extents,
                        logical,
                        &mut file,
                        &mut progress,
                    )
                    .map_err(|e| refuse(format!("its disk cannot be read whole ({e})")))?;
                    file.sync_all()
                        .with_context(|| format!("sync {}", path.display()))?;
                    unpacked.staged.insert(name.clone(), path);
                    expected.size
                }
                None => copy_counted(&mut limited, &mut io::sink(), &mut progress)?,
            }
        } else if name.starts_with("state/") {
            let mut bytes = Vec::new();
            let read = copy_counted(&mut limited, &mut bytes, &mut progress)?;
            unpacked.state.insert(name.clone(), bytes);
            read
        } else {
            match stage {
                Some(dir) => {
                    let path = dir.join(name.replace('/', "-"));
                    let mut file = create_staged(&path)?;
                    let read = copy_counted(&mut limited, &mut file, &mut progress)?;
                    file.sync_all()
                        .with_context(|| format!("sync {}", path.display()))?;
                    unpacked.staged.insert(name.clone(), path);
                    read
                }
                None => copy_counted(&mut limited, &mut io::sink(), &mut progress)?,
            }
        };
        if read != expected.size {
            return Err(refuse(format!(
                "its member '{name}' ends after {read} of {} bytes (truncated?)",
                expected.size
            )));
        }
        digests.insert(
            name.clone(),
            crate::ops::export::hex(digest.finish().as_ref()),
        );
        output.tick(&format!(
            "{}: read {} ({})",
            manifest.id,
            name,
            crate::instance::images::human_bytes(expected.size)
        ));
    }
    let checksums = checksums.ok_or_else(|| refuse(format!("it has no {CHECKSUMS}")))?;
    for (name, digest) in &digests {
        if checksums.sha256.get(name) != Some(digest) {
            return Err(refuse(format!(
                "its member '{name}' does not match its checksum (damaged or changed)"
            )));
        }
    }
    if checksums.sha256.len() != digests.len() {
        return Err(refuse("its checksums name members it does not hold".into()));
    }
    Ok((manifest, unpacked))
}

/// A refusal while reading names the filter that failed under it, when one did: a wrong
/// identity or a cut stream shows to the tar reader only as a short or empty stream.
fn filter_first(opener: &mut Opener, error: anyhow::Error) -> anyhow::Error {
    if crate::host::interrupt::caused(&error) {
        return error;
    }
    match opener.failed_filter() {
        Some(failed) => anyhow::Error::from(failed).context(
            "the archive is refused: its stream is damaged, cut short or not for this identity",
        ),
        None => error,
    }
}

/// The member's name as its tar entry gives it, PAX and GNU long names applied.
fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, String> {
    let path = entry
        .path()
        .map_err(|e| format!("a member's name cannot be read ({e})"))?;
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| "a member's name is not UTF-8".to_owned())
}

/// Only regular files of an allowed name, within their cap.
fn check_entry<R: Read>(entry: &tar::Entry<'_, R>, name: &str, cap: u64) -> Result<(), String> {
    let actual = entry_name(entry)?;
    if cap_of(&actual).is_none() {
        return Err(format!(
            "it holds '{}', which no archive of fireclaw holds",
            escaped(&actual)
        ));
    }
    if actual != name {
        return Err(format!("it holds '{actual}' where '{name}' comes first"));
    }
    let kind = entry.header().entry_type();
    if !kind.is_file() {
        let what = if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_hard_link() {
            "a hard link"
        } else if kind.is_character_special() || kind.is_block_special() {
            "a device"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "an entry of another kind"
        };
        return Err(format!(
            "its member '{name}' is {what}; only regular files belong in one"
        ));
    }
    let size = entry.header().size().map_err(|e| e.to_string())?;
    if size > cap {
        return Err(format!(
            "its member '{name}' declares {size} bytes, over its cap of {cap}"
        ));
    }
    Ok(())
}

fn create_staged(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("create {}", path.display()))
}

/// Copies all of `from` to `to`, every byte through `sink`; returns the count.
fn copy_counted(
    from: &mut dyn Read,
    to: &mut dyn Write,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<u64> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let read = from.read(&mut buffer).context("read the archive")?;
        if read == 0 {
            return Ok(total);
        }
        sink(&buffer[..read]);
        to.write_all(&buffer[..read])
            .context("write what the archive holds")?;
        total += read as u64;
    }
}

/// `import --check`: reads and verifies the whole archive, keeps nothing.
pub fn check(spec: &ImportSpec, output: &mut Output<'_>) -> Result<Report> {
    let mut opener = open_input(spec)?;
    let encrypted = opener.kind == crate::host::archive_stream::Kind::Encrypted;
    let (manifest, unpacked) = read_archive(&mut opener, &mut |_| Ok(None), output)
        .map_err(|error| filter_first(&mut opener, error))?;
    opener.finish(TAIL_CAP)?;
    // The bytes only: the settings are validated against this host when it imports them.
    drop(unpacked);
    Ok(report(&manifest, encrypted, None, false))
}

fn report(
    manifest: &Manifest,
    encrypted: bool,
    at: Option<(String, u16)>,
    started: bool,
) -> Report {
    Report {
        id: manifest.id.clone(),
        uuid: manifest.uuid.clone(),
        made_by: manifest.made_by.clone(),
        source_host: manifest.source_host.clone(),
        created_at: manifest.created_at.clone(),
        encrypted,
        members: manifest.members.clone(),
        ip: at.as_ref().map(|(ip, _)| ip.clone()),
        port: at.map(|(_, port)| port),
        started,
    }
}

/// Refuses an archive this host cannot take, before anything is unpacked: an id that is not
/// valid here or taken, a UUID an instance here has, too little room.
fn check_acceptable(settings: &Settings, manifest: &Manifest) -> Result<InstanceId> {
    let id: InstanceId =
        manifest
            .id
            .parse()
            .map_err(|e: crate::instance::values::InvalidValue| {
                anyhow!("the archive's instance id is not valid: {}", e.0)
            })?;
    if id.as_str() == crate::instance::baked::BUILDER_ID {
        bail!(
            "the archive's instance id '{id}' is reserved here for the builder VM of fireclaw image bake"
        );
    }
    if !is_uuid(&manifest.uuid) {
        bail!("the archive's UUID is not valid");
    }
    // The sockets its id makes under this host's FC_ROOT must fit the kernel's limit.
    for socket in [
        default_api_sock(&settings.paths.fc_root, id.as_str()),
        AssetPaths::new(&settings.paths.fc_root, &id).vmm_api_sock,
    ] {
        let length = socket.as_os_str().len();
        if length > crate::instance::spec::MAX_SOCKET_PATH {
            bail!(
                "the archive's instance id '{id}' is too long for this host: its API socket {} would be {length} bytes, and the kernel allows {} (a shorter FC_ROOT here would take it)",
                socket.display(),
                crate::instance::spec::MAX_SOCKET_PATH
            );
        }
    }
    let state = StatePaths::new(&settings.paths.state_root, &id);
    if state.dir.symlink_metadata().is_ok() {
        bail!(
            "instance '{id}' already exists on this host; an agent runs once: destroy that one first (fireclaw destroy {id}), or import this archive elsewhere"
        );
    }
    for scanned in scan_instances(&settings.paths.state_root)? {
        let Ok(other) = scanned.name.parse::<InstanceId>() else {
            continue;
        };
        let uuid = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &other))
            .ok()
            .flatten()
            .and_then(|s| s.uuid);
        if uuid.as_deref() == Some(manifest.uuid.as_str()) {
            bail!(
                "instance '{other}' on this host is this archive's agent already (UUID {}); an agent runs once: destroy '{other}' first, or keep it and drop this import",
                manifest.uuid
            );
        }
    }
    let needed = manifest
        .unpacked_bytes()
        .saturating_add(manifest.unpacked_bytes() / 10)
        .saturating_add(SPACE_MARGIN);
    std::fs::create_dir_all(&settings.paths.fc_root)
        .with_context(|| format!("create {}", settings.paths.fc_root.display()))?;
    crate::host::rootfs_build::ensure_space(
        &settings.paths.fc_root,
        needed,
        "for the archive's disk and boot files",
    )?;
    Ok(id)
}

/// The archive's settings as a setup request of this host: every value through setup's own
/// validation, every host-specific one derived here.
fn spec_from(
    settings: &Settings,
    id: &InstanceId,
    unpacked: &Unpacked,
    manifest: &Manifest,
    keep_private_egress: bool,
) -> Result<(SetupSpec, Imported, FireclawState)> {
    let text = |name: &str| -> Result<String> {
        let bytes = unpacked
            .state
            .get(name)
            .with_context(|| format!("the archive has no {name}"))?;
        String::from_utf8(bytes.clone())
            .with_context(|| format!("the archive's {name} is not text"))
    };
    fn bad(what: &str) -> impl Fn(crate::instance::values::InvalidValue) -> anyhow::Error + '_ {
        move |e| anyhow!("the archive's {what} cannot be used: {}", e.0)
    }
    let env = EnvFile::parse(&text("state/env")?).context("the archive's .env")?;
    let vars =
        VarsFile::parse(&text("state/provision.vars")?).context("the archive's provision.vars")?;
    let state = FireclawState::parse(&text("state/fireclaw.json")?)
        .context("the archive's fireclaw.json")?;
    let token =
        GatewayToken::from_file_text(&text("state/token")?).context("the archive's token")?;
    for (file, value) in [
        ("the .env", env.get("INSTANCE_ID")),
        ("provision.vars", vars.get("INSTANCE_ID")),
    ] {
        if value.trim() != id.as_str() {
            bail!("the archive's {file} names another instance than its manifest");
        }
    }
    if vars.get("GATEWAY_TOKEN").trim() != token.expose() {
        bail!("the archive's provision.vars holds another gateway token than its token file");
    }
    if state.uuid.as_deref() != Some(manifest.uuid.as_str()) {
        bail!("the archive's fireclaw.json holds another UUID than its manifest");
    }
    let host_key = host_key_from_openssh(
        &text("state/ssh_host_ed25519_key")?,
        &text("state/ssh_host_ed25519_key.pub")?,
    )
    .context("the archive's SSH host key")?;
    let secret = |key: &'static str| -> Result<Option<Secret>> {
        match vars.get(key).trim() {
            "" => Ok(None),
            value => Secret::parse(key, value).map(Some).map_err(bad(key)),
        }
    };
    let telegram = match (secret("TELEGRAM_TOKEN")?, vars.get("TELEGRAM_USERS").trim()) {
        (Some(token), users) if !users.is_empty() => Some(TelegramSpec {
            token,
            users: users.parse().map_err(bad("TELEGRAM_USERS"))?,
        }),
        (Some(_), _) => bail!("the archive has a Telegram token without users"),
        (None, _) => None,
    };
    let staged = |name: &str| unpacked.staged.get(name).cloned();
    let rootfs = staged(DISK).context("the archive's disk was not unpacked")?;
    let disk_bytes = std::fs::metadata(&rootfs).map(|m| m.len()).unwrap_or(0);
    let mut disk_size: crate::instance::values::DiskSize = env
        .get("DISK_SIZE")
        .trim()
        .parse()
        .map_err(bad("DISK_SIZE"))?;
    if disk_size.bytes() < disk_bytes {
        // The disk grew past its recorded size by hand: it is never shrunk.
        disk_size = format!("{}M", disk_bytes.div_ceil(1 << 20))
            .parse()
            .map_err(bad("disk size"))?;
    }
    let allow_private_egress = if keep_private_egress {
        PrivateEgress::from_networks(state.allow_private_egress.clone())
    } else {
        PrivateEgress::default()
    };
    let spec = SetupSpec::new(SetupSpec {
        id: id.clone(),
        telegram,
        model: vars.get("MODEL").trim().parse().map_err(bad("MODEL"))?,
        skills: vars.get("SKILLS").trim().parse().map_err(bad("SKILLS"))?,
        image: vars
            .get("OPENCLAW_IMAGE")
            .trim()
            .parse()
            .map_err(bad("OPENCLAW_IMAGE"))?,
        host_port: None,
        vcpu: env.get("VM_VCPU").trim().parse().map_err(bad("VM_VCPU"))?,
        memory: env
            .get("VM_MEM_MIB")
            .trim()
            .parse()
            .map_err(bad("VM_MEM_MIB"))?,
        disk_size,
        api_sock: default_api_sock(&settings.paths.fc_root, id.as_str()),
        base: BaseImages {
            kernel: staged("boot/vmlinux").context("the archive's kernel was not unpacked")?,
            rootfs,
            // No initrd in the archive: a name that is not there (setup then uses none).
            initrd: staged("boot/initrd.img")
                .unwrap_or_else(|| settings.paths.fc_root.join(".import-no-initrd")),
        },
        keys: ProviderKeys {
            anthropic: secret("ANTHROPIC_API_KEY")?,
            openai: secret("OPENAI_API_KEY")?,
            minimax: secret("MINIMAX_API_KEY")?,
        },
        skip_browser_install: parse_flag(vars.get("SKIP_BROWSER_INSTALL")),
        openclaw_pull: state.pull_policy(),
        allow_private_egress,
        ssh_key_path: settings.ssh_key_path.clone(),
        fc_root: settings.paths.fc_root.clone(),
        state_root: settings.paths.state_root.clone(),
    })
    .context("the archive's settings")?;
    Ok((
        spec,
        Imported {
            token,
            host_key,
            uuid: manifest.uuid.clone(),
        },
        state,
    ))
}

/// A staging dir of this run under `FC_ROOT`, locked while it is used (so `host cleanup` and
/// the next import tell a live one from a killed one's), removed on drop.
struct Staging {
    dir: PathBuf,
    _lock: crate::store::HeldLock,
}

impl Staging {
    fn create(fc_root: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = fc_root.join(format!("{STAGING_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        let lock = lock_file(&dir.join(".lock"))?;
        Ok(Self { dir, _lock: lock })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Staging dirs under `FC_ROOT` that no live import holds: what killed ones left.
pub fn staging_leftovers(settings: &Settings) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(&settings.paths.fc_root) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
        })
        .map(|entry| entry.path())
        .filter(|path| !crate::store::lock_file_held(&path.join(".lock")))
        .collect();
    found.sort();
    found
}

/// Removes what a killed import left: staging dirs no import holds, and instances in phase
/// `importing` whose lock is free. Returns what was removed, for a person.
pub fn remove_leftovers(
    settings: &Settings,
    services: &dyn ServiceManager,
    network: &dyn HostSteps,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for path in staging_leftovers(settings) {
        std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        removed.push(format!(
            "the staging dir {} of an interrupted import",
            path.display()
        ));
    }
    for scanned in scan_instances(&settings.paths.state_root)? {
        let Ok(id) = scanned.name.parse::<InstanceId>() else {
            continue;
        };
        let paths = StatePaths::new(&settings.paths.state_root, &id);
        let importing = read_fireclaw_state(&paths)
            .ok()
            .flatten()
            .is_some_and(|s| s.phase == Phase::Importing);
        if !importing || crate::store::instance_lock_held(&settings.paths.state_root, &id) {
            continue;
        }
        teardown_instance(settings, &id, None, services, network)?;
        removed.push(format!("instance '{id}', whose import was interrupted"));
    }
    Ok(removed)
}

/// `import`: reads and verifies the archive into staging, then makes the instance from it as
/// setup makes one, then commits it; `--start` brings it up.
pub fn import(
    settings: &Settings,
    spec: &ImportSpec,
    tools: &HostTools,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<Report> {
    let network = HostSystem { settings };
    for done in remove_leftovers(settings, services, &network)? {
        output.progress(&format!("removed {done}"));
    }
    let mut opener = open_input(spec)?;
    let encrypted = opener.kind == crate::host::archive_stream::Kind::Encrypted;
    // Nothing is made before the manifest says the archive suits this host.
    let mut staging = None;
    let mut accepted = None;
    let (manifest, unpacked) = read_archive(
        &mut opener,
        &mut |manifest| {
            accepted = Some(check_acceptable(settings, manifest)?);
            let made = Staging::create(&settings.paths.fc_root)?;
            let dir = made.dir.clone();
            staging = Some(made);
            Ok(Some(dir))
        },
        output,
    )
    .map_err(|error| filter_first(&mut opener, error))?;
    // Every filter ended well: the stream was whole (a truncated or forged one fails here).
    opener.finish(TAIL_CAP)?;
    let id = accepted.context("internal: the archive was not checked")?;
    crash_point("import:staged");
    let (setup, imported, source_state) = spec_from(
        settings,
        &id,
        &unpacked,
        &manifest,
        spec.keep_private_egress,
    )?;
    let (media, warning) = boot_media(&setup)?;
    if let Some(warning) = warning {
        output.warn(&warning);
    }
    let _lock = super::instance::lock(settings, &id, output)?;
    output.progress(&format!("{id}: making the instance from the archive"));
    install_from(
        settings,
        &setup,
        tools,
        services,
        &network,
        media,
        Origin::Import(&imported),
    )?;
    let paths = StatePaths::new(&settings.paths.state_root, &id);
    let committed = (|| -> Result<()> {
        let assets = AssetPaths::new(&settings.paths.fc_root, &id);
        for (member, file) in [
            ("logs/console.log", "imported-console.log"),
            ("logs/firecracker.log", "imported-firecracker.log"),
        ] {
            if let Some(staged) = unpacked.staged.get(member) {
                std::fs::rename(staged, assets.logs.join(file))
                    .with_context(|| format!("keep the archive's {member}"))?;
            }
        }
        crash_point("import:units");
        // The commit: the instance is whole from here on.
        crate::store::update_fireclaw_state(&paths, |state| {
            state.phase = Phase::Provisioned;
            state.created_by = source_state.created_by.clone();
        })?;
        crash_point("import:committed");
        Ok(())
    })();
    if let Err(error) = committed {
        let cleanup = teardown_instance(settings, &id, None, services, &network);
        return Err(match cleanup {
            Ok(()) => error.context(format!(
                "import of '{id}' failed and was rolled back (nothing of it is left)"
            )),
            Err(cleanup) => error.context(format!(
                "import of '{id}' failed and removing what it made failed too ({}); clean up with: fireclaw destroy {id} --force",
                crate::output::error_chain(cleanup.as_ref())
            )),
        });
    }
    drop(staging);
    let loaded = super::instance::load(settings, &id)?;
    let mut started = false;
    if spec.start {
        refuse_shared_telegram_token(settings, &id, &unpacked)?;
        let mut watch = Stopwatch::new(TimedVerb::Start);
        bring_up(
            &loaded,
            services,
            &loaded.ssh,
            spec.waits,
            &mut watch,
            output,
        )
        .map_err(|error| {
            super::lifecycle::explain_unreachable(settings, &loaded, services, error)
        })?;
        started = true;
    }
    Ok(report(
        &manifest,
        encrypted,
        Some((loaded.ssh.ip.to_string(), loaded.port)),
        started,
    ))
}

/// Two gateways polling one Telegram bot break each other: a bot token another instance here
/// uses stops `--start` (the instance stays, stopped).
fn refuse_shared_telegram_token(
    settings: &Settings,
    id: &InstanceId,
    unpacked: &Unpacked,
) -> Result<()> {
    let vars = unpacked
        .state
        .get("state/provision.vars")
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_default();
    let Ok(vars) = VarsFile::parse(&vars) else {
        return Ok(());
    };
    let token = vars.get("TELEGRAM_TOKEN").trim();
    if token.is_empty() {
        return Ok(());
    }
    for scanned in scan_instances(&settings.paths.state_root)? {
        if scanned.name == id.as_str() {
            continue;
        }
        let Ok(other) = scanned.name.parse::<InstanceId>() else {
            continue;
        };
        let path = StatePaths::new(&settings.paths.state_root, &other).vars;
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if VarsFile::parse(&text).is_ok_and(|v| v.get("TELEGRAM_TOKEN").trim() == token) {
            bail!(
                "instance '{id}' was imported but not started: instance '{other}' on this host uses the same Telegram bot token, and two gateways polling one bot break each other; stop '{other}' (or give one of them another bot), then: fireclaw start {id}"
            );
        }
    }
    Ok(())
}
