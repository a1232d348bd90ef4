//! Instance state on disk under `STATE_ROOT`: the paths of each instance's files, atomic
//! writes (temp file, fsync, rename, fsync of the dir), the allocation lock 0.2.0 also uses,
//! per-instance lifecycle locks, scanning every instance, and reserving a new one (its
//! `.vm-<id>` made with `mkdir` under the allocation lock, held until `.env` is on disk).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::instance::alloc::Taken;
use crate::instance::baked::{BAKED_FILE, BakedManifest};
use crate::instance::images::{ImageManifest, MANIFEST_FILE};
use crate::instance::layout::{ENV_FILE, LockPaths, StatePaths, instance_of_state_dir};
use crate::instance::state::{EnvFile, FireclawState, StateError};
use crate::instance::values::InstanceId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("create directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("write {path}")]
    WriteFile { path: PathBuf, source: io::Error },
    #[error("read {path}")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("{path}")]
    Parse { path: PathBuf, source: StateError },
    #[error("lock {path}")]
    Lock { path: PathBuf, source: io::Error },
    #[error(
        "instance '{id}' is busy: another fireclaw command holds {path} (waited {waited_secs}s)"
    )]
    Busy {
        id: String,
        path: PathBuf,
        waited_secs: u64,
    },
    #[error("instance '{id}' already exists ({path})")]
    AlreadyExists { id: String, path: PathBuf },
    #[error("list {path}")]
    ListDir { path: PathBuf, source: io::Error },
    #[error("read {path}")]
    ParseManifest {
        path: PathBuf,
        source: crate::instance::images::ManifestError,
    },
    #[error("read {path}")]
    ParseBaked {
        path: PathBuf,
        source: crate::instance::baked::BakedError,
    },
    #[error("another 'fireclaw image fetch' or 'image bake' is writing to {dir} (it holds {path})")]
    ImagesBusy { dir: PathBuf, path: PathBuf },
    #[error("{path} already exists (use --force to replace it)")]
    ImageExists { path: PathBuf },
    #[error("install {path}")]
    Install { path: PathBuf, source: io::Error },
}

/// Creates `path` with mode 0700 if it does not exist, parents included.
pub fn ensure_private_dir(path: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StoreError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file, never a torn
/// one: temp file in the same dir with `mode`, fsync, rename, fsync of the dir.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let fail = |source| StoreError::WriteFile {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .ok_or_else(|| fail(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let name = path
        .file_name()
        .ok_or_else(|| fail(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)?;
        // The mode given to open() is filtered by the umask; secrets must not depend on it.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(fail)
}

fn read_text(path: &Path) -> Result<String, StoreError> {
    fs::read_to_string(path).map_err(|source| StoreError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

pub fn read_env(paths: &StatePaths) -> Result<EnvFile, StoreError> {
    EnvFile::parse(&read_text(&paths.env)?).map_err(|source| StoreError::Parse {
        path: paths.env.clone(),
        source,
    })
}

/// `fireclaw.json`, or `None` for an instance made by 0.2.0.
pub fn read_fireclaw_state(paths: &StatePaths) -> Result<Option<FireclawState>, StoreError> {
    match fs::read_to_string(&paths.fireclaw_json) {
        Ok(text) => FireclawState::parse(&text)
            .map(Some)
            .map_err(|source| StoreError::Parse {
                path: paths.fireclaw_json.clone(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::ReadFile {
            path: paths.fireclaw_json.clone(),
            source,
        }),
    }
}

/// Rewrites `fireclaw.json` (atomically) with `change` applied to the saved state, or to a new
/// state when there is none yet, so a phase change keeps every other field.
pub fn update_fireclaw_state(
    paths: &StatePaths,
    change: impl FnOnce(&mut FireclawState),
) -> Result<FireclawState, StoreError> {
    // The VM unit's `vm-resume` updates the file too, without the instance lock (the command
    // that started the unit may hold it): every update holds a lock on the state dir itself
    // (a flock on its descriptor, so no file is added there).
    let dir = File::open(&paths.dir).map_err(|source| StoreError::Lock {
        path: paths.dir.clone(),
        source,
    })?;
    dir.lock().map_err(|source| StoreError::Lock {
        path: paths.dir.clone(),
        source,
    })?;
    let mut state = read_fireclaw_state(paths)?
        .unwrap_or_else(|| FireclawState::new(crate::instance::state::Phase::Allocated));
    change(&mut state);
    write_atomic(&paths.fireclaw_json, state.render().as_bytes(), 0o600)?;
    Ok(state)
}

/// Records the lifecycle phase an instance has reached.
pub fn set_phase(
    paths: &StatePaths,
    phase: crate::instance::state::Phase,
) -> Result<(), StoreError> {
    update_fireclaw_state(paths, |state| state.phase = phase).map(|_| ())
}

/// An exclusive `flock`-style lock, released when dropped.
#[derive(Debug)]
pub struct HeldLock {
    _file: File,
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| StoreError::Lock {
            path: path.to_owned(),
            source,
        })
}

/// `STATE_ROOT/.net.lock`, held while the network pieces every VM shares are checked and
/// created; blocks until free.
pub fn lock_network(state_root: &Path) -> Result<HeldLock, StoreError> {
    lock_file(&LockPaths::new(state_root).network)
}

/// An exclusive lock on `path` (its dir made 0700 when missing); blocks until free.
pub fn lock_file(path: &Path) -> Result<HeldLock, StoreError> {
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    let file = open_lock_file(path)?;
    file.lock().map_err(|source| StoreError::Lock {
        path: path.to_owned(),
        source,
    })?;
    Ok(HeldLock { _file: file })
}

/// `STATE_ROOT/.alloc.lock`, the lock 0.2.0 holds while allocating; blocks until free.
pub fn lock_allocation(state_root: &Path) -> Result<HeldLock, StoreError> {
    lock_file(&LockPaths::new(state_root).allocation)
}

/// `STATE_ROOT/.locks/<id>.lock`, serialising lifecycle commands on one instance. Waits up to
/// `wait`, then reports the instance as busy. The lock files are never deleted, so a lock can
/// not be split between an old and a new inode.
pub fn lock_instance(
    state_root: &Path,
    id: &InstanceId,
    wait: Duration,
    on_wait: &mut dyn FnMut(&str),
) -> Result<HeldLock, StoreError> {
    let locks = LockPaths::new(state_root);
    ensure_private_dir(&locks.instances)?;
    let path = locks.instance(id);
    let mut file = open_lock_file(&path)?;
    let started = Instant::now();
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                note_holder(&mut file, id);
                return Ok(HeldLock { _file: file });
            }
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                if !told {
                    // Said at once: who holds it, when the holder wrote that down.
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    on_wait(holder.trim());
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Busy {
                    id: id.to_string(),
                    path,
                    waited_secs: wait.as_secs(),
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(StoreError::Lock { path, source });
            }
        }
    }
}

/// Whether another process holds the lifecycle lock of `id` right now (for `doctor`, which
/// only looks: a missing lock file is a free lock, and none is created).
pub fn instance_lock_held(state_root: &Path, id: &InstanceId) -> bool {
    lock_held(&LockPaths::new(state_root).instance(id))
}

/// Whether a live process holds the lock file at `path` right now (looking only).
pub fn lock_file_held(path: &Path) -> bool {
    lock_held(path)
}

/// Whether a fetch or bake holds the images directory `dir` right now (looking only).
pub fn image_dir_lock_held(dir: &Path) -> bool {
    lock_held(&dir.join(IMAGES_LOCK_FILE))
}

/// Takes the lock for an instant when it is free (flock has no way to only ask); the lockers
/// that do not wait long, the images directory's, allow for that.
fn lock_held(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock))
}

/// The staging dirs a fetch or bake left in `dir` (for `doctor`; empty when `dir` is missing).
pub fn staging_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(IMAGE_STAGING_PREFIX))
        .collect();
    names.sort();
    names
}

/// Writes who holds a lifecycle lock into its file (`pid <pid>: fireclaw <verb> <id>`), for a
/// command that has to wait for it. Only the verb is taken from the command line (the rest may
/// hold a key). Best effort: the lock holds either way.
fn note_holder(file: &mut File, id: &InstanceId) {
    use std::io::{Seek, Write};
    let verb = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .filter(|arg| arg.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        .unwrap_or_default();
    let text = format!("pid {}: fireclaw {verb} {id}\n", std::process::id());
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(text.as_bytes()));
}

/// One `.vm-*` directory found under `STATE_ROOT`.
#[derive(Debug)]
pub struct ScannedInstance {
    /// The name after `.vm-`, as found on disk (not necessarily a valid id).
    pub name: String,
    pub env: Result<EnvFile, StoreError>,
}

/// Every instance dir under `STATE_ROOT`, sorted by name. A missing root means no instances.
pub fn scan_instances(state_root: &Path) -> Result<Vec<ScannedInstance>, StoreError> {
    let entries = match fs::read_dir(state_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::ListDir {
                path: state_root.to_owned(),
                source,
            });
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(instance_of_state_dir) else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let env_path = entry.path().join(ENV_FILE);
        let env = read_text(&env_path).and_then(|text| {
            EnvFile::parse(&text).map_err(|source| StoreError::Parse {
                path: env_path.clone(),
                source,
            })
        });
        found.push(ScannedInstance {
            name: name.to_owned(),
            env,
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Ports and IPs held by the scanned instances. Instances whose `.env` cannot be read are
/// returned by name so the caller can warn: their holdings are unknown.
pub fn taken_by(instances: &[ScannedInstance]) -> (Taken, Vec<String>) {
    let mut taken = Taken::default();
    let mut unreadable = Vec::new();
    for instance in instances {
        let Ok(env) = &instance.env else {
            unreadable.push(instance.name.clone());
            continue;
        };
        match (env.host_port(), env.vm_ip()) {
            (Ok(port), Ok(ip)) => {
                taken.ports.insert(port, instance.name.clone());
                taken.ips.insert(ip);
            }
            (port, ip) => {
                if let Ok(port) = port {
                    taken.ports.insert(port, instance.name.clone());
                }
                if let Ok(ip) = ip {
                    taken.ips.insert(ip);
                }
                unreadable.push(instance.name.clone());
            }
        }
    }
    (taken, unreadable)
}

/// Reserves a new instance: under the allocation lock, `mkdir .vm-<id>` (EEXIST means the id is
/// taken), let `allocate` choose from what the other instances hold, and write `.env` and
/// `fireclaw.json` (phase `allocated`) before the lock is released. On any failure after the
/// mkdir the directory is removed again, so nothing is left behind.
pub fn reserve<E>(
    state_root: &Path,
    id: &InstanceId,
    initial: &FireclawState,
    allocate: impl FnOnce(&Taken) -> Result<EnvFile, E>,
) -> Result<Result<EnvFile, E>, StoreError> {
    let _lock = lock_allocation(state_root)?;
    let others = scan_instances(state_root)?;
    let paths = StatePaths::new(state_root, id);
    match DirBuilder::new().mode(0o700).create(&paths.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(StoreError::AlreadyExists {
                id: id.to_string(),
                path: paths.dir,
            });
        }
        Err(source) => {
            return Err(StoreError::CreateDir {
                path: paths.dir,
                source,
            });
        }
    }
    let (taken, _unreadable) = taken_by(&others);
    let written = (|| {
        let env = match allocate(&taken) {
            Ok(env) => env,
            Err(e) => return Ok(Err(e)),
        };
        write_atomic(&paths.env, env.render().as_bytes(), 0o600)?;
        write_atomic(&paths.fireclaw_json, initial.render().as_bytes(), 0o600)?;
        Ok(Ok(env))
    })();
    if !matches!(written, Ok(Ok(_))) {
        let _ = fs::remove_dir_all(&paths.dir);
    }
    written
}

/// `<dir>/fireclaw-images.json`, or `None` when the images directory has none.
pub fn read_image_manifest(dir: &Path) -> Result<Option<ImageManifest>, StoreError> {
    let path = dir.join(MANIFEST_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => ImageManifest::parse(&text)
            .map(Some)
            .map_err(|source| StoreError::ParseManifest { path, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::ReadFile { path, source }),
    }
}

/// Writes the manifest atomically, readable by all (it holds no secret).
pub fn write_image_manifest(dir: &Path, manifest: &ImageManifest) -> Result<(), StoreError> {
    write_atomic(
        &dir.join(MANIFEST_FILE),
        manifest.render().as_bytes(),
        0o644,
    )
}

/// `<dir>/fireclaw-baked.json`, or `None` when nothing was baked into the images directory.
pub fn read_baked_manifest(dir: &Path) -> Result<Option<BakedManifest>, StoreError> {
    let path = dir.join(BAKED_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => BakedManifest::parse(&text)
            .map(Some)
            .map_err(|source| StoreError::ParseBaked { path, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::ReadFile { path, source }),
    }
}

/// Writes the baked-image record atomically, readable by all (it holds no secret).
pub fn write_baked_manifest(dir: &Path, manifest: &BakedManifest) -> Result<(), StoreError> {
    write_atomic(&dir.join(BAKED_FILE), manifest.render().as_bytes(), 0o644)
}

/// The lock file that keeps two fetches out of one images directory.
pub const IMAGES_LOCK_FILE: &str = ".fireclaw-images.lock";
/// Prefix of the private staging directories fetches work in, inside the images directory
/// (so the final rename stays on one filesystem).
pub const IMAGE_STAGING_PREFIX: &str = ".fireclaw-image-";

/// Creates the images directory (0755: Firecracker and `setup` read from it) and takes its
/// lock without waiting: a second fetch into the same directory is refused, not queued
/// behind a download of hundreds of MiB.
pub fn lock_image_dir(dir: &Path) -> Result<HeldLock, StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    let path = dir.join(IMAGES_LOCK_FILE);
    let file = open_lock_file(&path)?;
    // A second is waited out: `doctor` takes the lock for an instant to see whether it is held.
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(HeldLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < IMAGES_LOCK_PATIENCE => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::ImagesBusy {
                    dir: dir.to_owned(),
                    path,
                });
            }
            Err(fs::TryLockError::Error(source)) => return Err(StoreError::Lock { path, source }),
        }
    }
}

/// How long taking the images directory's lock waits before calling it busy.
const IMAGES_LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// Removes the staging dirs a killed fetch or bake left in `dir` (the caller holds the
/// directory's lock, so none is in use); returns their names.
pub fn remove_stale_staging(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = fs::read_dir(dir).map_err(|source| StoreError::ListDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(IMAGE_STAGING_PREFIX) {
            let _ = fs::remove_dir_all(entry.path());
            removed.push(name);
        }
    }
    Ok(removed)
}

/// A private directory inside the images directory where a fetch downloads, unpacks and
/// builds; removed when dropped, on success and on every error.
#[derive(Debug)]
pub struct ImageStaging {
    path: PathBuf,
}

impl ImageStaging {
    /// Removes what a killed fetch left (the caller holds the directory's lock, so no other
    /// fetch is using it), then makes a fresh staging dir (0700).
    pub fn create(dir: &Path) -> Result<Self, StoreError> {
        remove_stale_staging(dir)?;
        let path = dir.join(format!("{IMAGE_STAGING_PREFIX}{}", std::process::id()));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| StoreError::CreateDir {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ImageStaging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Moves a finished file from staging to `target` (same filesystem): fsync, then a rename when
/// `replace`, else a hard link that fails if `target` exists (so nothing is overwritten
/// without `--force`, even by a file that appeared meanwhile), then fsync of the directory.
pub fn install_image(staged: &Path, target: &Path, replace: bool) -> Result<(), StoreError> {
    let fail = |source| StoreError::Install {
        path: target.to_owned(),
        source,
    };
    // Base images hold nothing secret and every instance copies them: one mode for all,
    // whatever the umask or the download's own mode was.
    fs::set_permissions(staged, fs::Permissions::from_mode(0o644)).map_err(fail)?;
    File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(fail)?;
    if replace {
        fs::rename(staged, target).map_err(fail)?;
    } else {
        match fs::hard_link(staged, target) {
            Ok(()) => fs::remove_file(staged).map_err(fail)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::ImageExists {
                    path: target.to_owned(),
                });
            }
            Err(e) => return Err(fail(e)),
        }
    }
    let dir = target.parent().unwrap_or(Path::new("/"));
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::alloc::first_free_port;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Barrier};

    /// A fresh temporary directory, removed when dropped (also when the test panics).
    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn id(s: &str) -> InstanceId {
        s.parse().unwrap()
    }

    fn env_with_port(id: &str, port: u16, octet: u8) -> EnvFile {
        EnvFile::from_values(|key| match key {
            "INSTANCE_ID" => Some(id.to_owned()),
            "HOST_PORT" => Some(port.to_string()),
            "VM_IP" => Some(format!("172.16.0.{octet}")),
            "VM_TAP" => Some(format!("t{octet}")),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn atomic_write_sets_mode_despite_umask_and_replaces() {
        let dir = temp_dir();
        let path = dir.path().join("secret");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
    }

    #[test]
    fn reserve_creates_a_private_dir_with_env_and_phase() {
        let root = temp_dir();
        let env = reserve(
            root.path(),
            &id("a"),
            &FireclawState::new(crate::instance::state::Phase::Allocated),
            |taken| {
                Ok::<_, String>(env_with_port(
                    "a",
                    first_free_port(18890, taken).unwrap().get(),
                    2,
                ))
            },
        )
        .unwrap()
        .unwrap();
        let paths = StatePaths::new(root.path(), &id("a"));
        assert_eq!(fs::metadata(&paths.dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(read_env(&paths).unwrap(), env);
        assert_eq!(
            read_fireclaw_state(&paths).unwrap().unwrap().phase,
            crate::instance::state::Phase::Allocated
        );
        assert!(root.path().join(".alloc.lock").exists());
    }

    #[test]
    fn reserve_sees_other_instances_and_refuses_an_existing_id() {
        let root = temp_dir();
        reserve(
            root.path(),
            &id("a"),
            &FireclawState::new(crate::instance::state::Phase::Allocated),
            |_| Ok::<_, String>(env_with_port("a", 18891, 2)),
        )
        .unwrap()
        .unwrap();
        let seen = reserve(
            root.path(),
            &id("b"),
            &FireclawState::new(crate::instance::state::Phase::Allocated),
            |taken| {
                Ok::<_, String>(env_with_port(
                    "b",
                    first_free_port(18890, taken).unwrap().get(),
                    3,
                ))
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(seen.host_port().unwrap(), 18892);
        let err = reserve(
            root.path(),
            &id("a"),
            &FireclawState::new(crate::instance::state::Phase::Allocated),
            |_| Ok::<_, String>(env_with_port("a", 1, 9)),
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn a_failed_allocation_leaves_nothing_behind() {
        let root = temp_dir();
        let result = reserve(
            root.path(),
            &id("a"),
            &FireclawState::new(crate::instance::state::Phase::Allocated),
            |_| Err::<EnvFile, _>("pool empty"),
        );
        assert_eq!(result.unwrap().unwrap_err(), "pool empty");
        assert!(!root.path().join(".vm-a").exists());
    }

    #[test]
    fn concurrent_reservations_of_one_id_let_exactly_one_through() {
        let root = Arc::new(temp_dir());
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (root, barrier) = (root.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    reserve(
                        root.path(),
                        &id("same"),
                        &FireclawState::new(crate::instance::state::Phase::Allocated),
                        |_| Ok::<_, String>(env_with_port("same", 18891, 2)),
                    )
                    .is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(wins, 1);
    }

    #[test]
    fn concurrent_reservations_of_different_ids_get_distinct_ports() {
        let root = Arc::new(temp_dir());
        let handles: Vec<_> = (0..8u8)
            .map(|n| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let name = format!("bot{n}");
                    reserve(
                        root.path(),
                        &id(&name),
                        &FireclawState::new(crate::instance::state::Phase::Allocated),
                        |taken| {
                            let port = first_free_port(18890, taken).unwrap().get();
                            Ok::<_, String>(env_with_port(&name, port, n + 2))
                        },
                    )
                    .unwrap()
                    .unwrap()
                    .host_port()
                    .unwrap()
                })
            })
            .collect();
        let mut ports: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 8);
    }

    #[test]
    fn instance_lock_reports_busy_after_the_bound() {
        let root = temp_dir();
        let _held = lock_instance(root.path(), &id("a"), Duration::ZERO, &mut |_| {}).unwrap();
        let mut told = Vec::new();
        let err = lock_instance(
            root.path(),
            &id("a"),
            Duration::from_millis(200),
            &mut |h| told.push(h.to_owned()),
        )
        .unwrap_err();
        assert_eq!(told.len(), 1, "told once: {told:?}");
        assert!(
            told[0].starts_with(&format!("pid {}: fireclaw ", std::process::id()))
                && told[0].ends_with(" a"),
            "{told:?}"
        );
        assert!(err.to_string().starts_with("instance 'a' is busy"), "{err}");
        // A different instance is not affected.
        lock_instance(root.path(), &id("b"), Duration::ZERO, &mut |_| {}).unwrap();
    }

    #[test]
    fn a_held_instance_lock_is_seen_without_taking_it() {
        let root = temp_dir();
        assert!(!instance_lock_held(root.path(), &id("a")), "no lock file");
        assert!(!root.path().join(".locks").exists(), "none was created");
        let held = lock_instance(root.path(), &id("a"), Duration::ZERO, &mut |_| {}).unwrap();
        assert!(instance_lock_held(root.path(), &id("a")));
        assert!(!instance_lock_held(root.path(), &id("b")));
        drop(held);
        assert!(!instance_lock_held(root.path(), &id("a")));
        // Looking did not take it.
        lock_instance(root.path(), &id("a"), Duration::ZERO, &mut |_| {}).unwrap();
    }

    #[test]
    fn scan_reports_unreadable_env_without_hiding_others() {
        let root = temp_dir();
        for (name, text) in [
            (
                "good",
                "INSTANCE_ID=good\nHOST_PORT=18891\nVM_IP=172.16.0.2\nVM_TAP=t2\n",
            ),
            ("bad", "garbage\n"),
        ] {
            let dir = root.path().join(format!(".vm-{name}"));
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join(".env"), text).unwrap();
        }
        fs::create_dir(root.path().join(".locks")).unwrap();
        let scanned = scan_instances(root.path()).unwrap();
        let names: Vec<&str> = scanned.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["bad", "good"]);
        let (taken, unreadable) = taken_by(&scanned);
        assert_eq!(unreadable, ["bad"]);
        assert_eq!(taken.ports.get(&18891).map(String::as_str), Some("good"));
        assert!(
            scan_instances(&root.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }
}
