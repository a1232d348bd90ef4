//! The command-line surface, as clap types and nothing else: no I/O, no defaults that depend on
//! the environment (those are resolved in `settings`). Values are validated into newtypes by the
//! parsers here, so a bad flag is refused before any command runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::instance::baked::BakeName;
use crate::instance::images::{ImageSource, Sha256Hex};
use crate::instance::values::{
    DiskSize, HostPort, ImageRef, InstanceId, MemoryMib, Model, PrivateEgress, PullPolicy, Secret,
    Skills, TelegramUsers, VcpuCount, parse_absolute_path, parse_telegram_token,
};

#[derive(Debug, Parser)]
#[command(
    name = "fireclaw",
    version,
    about = "Run OpenClaw agent gateways in Firecracker microVMs: one VM per instance.",
    long_about = "Run OpenClaw agent gateways in Firecracker microVMs: one VM per instance, each \
with its own kernel, disk, network and Docker daemon, supervised by systemd.\n\n\
Most commands need root. Host-wide settings come from the environment: STATE_ROOT, FC_ROOT, \
BASE_PORT, BRIDGE_NAME, BRIDGE_ADDR, SUBNET_CIDR, SSH_KEY_PATH, BASE_IMAGES_DIR, DISK_SIZE, \
API_SOCK, OPENCLAW_IMAGE_DEFAULT, FIRECLAW_LOCK_WAIT. Private networks every guest may reach are \
listed in STATE_ROOT/private-egress.allow.",
    propagate_version = true
)]
pub struct Cli {
    /// Print only errors, warnings and the final result (no progress lines).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Preflight: host commands, /dev/kvm, base images, bridge, capacity.
    #[command(
        after_help = "Examples:\n  sudo fireclaw doctor\n  sudo fireclaw doctor --json | jq '.checks[] | select(.status != \"pass\")'"
    )]
    Doctor(JsonFlag),
    /// Create and provision a new instance.
    #[command(
        after_help = "Examples:\n  fireclaw setup --instance my-bot --openai-api-key sk-example --dry-run\n  read -rsp 'OpenAI API key: ' OPENAI_API_KEY && export OPENAI_API_KEY\n  sudo --preserve-env=OPENAI_API_KEY fireclaw setup --instance my-bot\n  sudo --preserve-env=ANTHROPIC_API_KEY fireclaw setup --instance tg-bot \\\n       --model anthropic/claude-opus-4-6 --telegram-token 123:ABC --telegram-users 111,222"
    )]
    Setup(Box<SetupArgs>),
    /// Update an instance's saved config and rerun guest provisioning (same IP, port and disk).
    #[command(
        after_help = "Examples:\n  sudo fireclaw provision my-bot --model anthropic/claude-opus-4-6\n  sudo fireclaw provision my-bot --allow-private-egress 10.1.2.0/24"
    )]
    Provision(Box<ProvisionArgs>),
    /// Fleet table with health.
    #[command(after_help = "Examples:\n  sudo fireclaw list\n  sudo fireclaw list --json")]
    List(JsonFlag),
    /// Detail for one instance, or for the whole fleet.
    #[command(
        after_help = "Examples:\n  sudo fireclaw status my-bot\n  sudo fireclaw status --json"
    )]
    Status(StatusArgs),
    /// Start an instance's VM, guest service and proxy, then wait until healthy.
    #[command(
        after_help = "Examples:\n  sudo fireclaw start my-bot\n  sudo fireclaw start my-bot --cold   # a suspended one, fresh from its disk"
    )]
    Start(StartOnlyArgs),
    /// Stop proxy, guest service and VM, and disable the units (stays stopped across reboots).
    #[command(after_help = "Examples:\n  sudo fireclaw stop my-bot")]
    Stop(InstanceArg),
    /// Stop, then start.
    #[command(after_help = "Examples:\n  sudo fireclaw restart my-bot --health-timeout 120")]
    Restart(StartArgs),
    /// Write the VM's memory to disk and stop it; resume continues where it stopped.
    #[command(
        after_help = "Examples:\n  sudo fireclaw suspend my-bot\n  sudo fireclaw suspend --all      # before host maintenance"
    )]
    Suspend(SuspendArgs),
    /// Load a suspended VM's memory and let it run on, then wait until healthy.
    #[command(
        after_help = "Examples:\n  sudo fireclaw resume my-bot\n  sudo fireclaw resume --all       # after host maintenance"
    )]
    Resume(ResumeArgs),
    /// Show and follow the guest service's journal, the host units' journal, or the VM's console.
    #[command(
        after_help = "Examples:\n  sudo fireclaw logs my-bot\n  sudo fireclaw logs my-bot host -n 50 --no-follow\n  sudo fireclaw logs my-bot console -n 200\n  sudo fireclaw logs my-bot --since \"10 min ago\""
    )]
    Logs(LogsArgs),
    /// SSH into the VM, or run one command there.
    #[command(
        after_help = "Examples:\n  sudo fireclaw shell my-bot\n  sudo fireclaw shell my-bot \"docker ps\""
    )]
    Shell(ShellArgs),
    /// Print the gateway auth token.
    #[command(after_help = "Examples:\n  sudo fireclaw token my-bot")]
    Token(InstanceArg),
    /// Remove units, tap, API socket, state and assets.
    #[command(
        after_help = "Examples:\n  sudo fireclaw destroy my-bot\n  sudo fireclaw destroy my-bot -y"
    )]
    Destroy(DestroyArgs),
    /// Rewrite the units and scripts of an instance made by fireclaw 0.2.0 in fireclaw's shape,
    /// keeping the old ones in <FC_ROOT>/<id>/backup-0.2.0/.
    Adopt(InstanceArg),
    /// Write an instance (its disk, boot files, settings, secrets, token, host key and UUID)
    /// into a verified archive that `import` rebuilds on any fireclaw host.
    #[command(after_help = "Examples:
  sudo fireclaw stop my-bot && sudo fireclaw export my-bot --output /var/backups/my-bot.fireclaw
  sudo fireclaw export my-bot --pause --recipient age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p --output my-bot.fireclaw
  sudo fireclaw export --all --pause --output-dir /var/backups/fireclaw --keep 7 --recipients-file /etc/fireclaw/backup.recipients")]
    Export(Box<ExportArgs>),
    /// Rebuild an instance from an archive of `export`, as this host's instance (its own
    /// address, port and VMM account; the agent's token, host key, UUID and data unchanged).
    #[command(after_help = "Examples:
  sudo fireclaw import --check /var/backups/my-bot.fireclaw
  sudo fireclaw import my-bot.fireclaw --start
  ssh old-host sudo fireclaw export my-bot --output - | sudo fireclaw import - --start")]
    Import(Box<ImportArgs>),
    /// Change an instance's vCPUs or memory, or grow its disk; a running VM restarts to apply it.
    #[command(
        after_help = "Examples:\n  sudo fireclaw resize my-bot --vm-mem-mib 4096 --vm-vcpu 2\n  sudo fireclaw resize my-bot --disk-size 80G"
    )]
    Resize(Box<ResizeArgs>),
    /// Make this host's instances match a declared file: create, start, stop, suspend,
    /// resume, reprovision, resize or remove each as needed (see README: Many hosts).
    #[command(after_help = "Examples:
  sudo fireclaw apply -f /etc/fireclaw/instances.toml --dry-run
  sudo --preserve-env=BOT_OPENAI_KEY fireclaw apply -f /etc/fireclaw/instances.toml
  sudo fireclaw apply -f /etc/fireclaw/instances.toml --prune --backup-dir /var/backups/fireclaw")]
    Apply(Box<ApplyArgs>),
    /// Show or re-apply the guest network policy (what guests may reach).
    #[command(subcommand)]
    Egress(EgressCommand),
    /// Fetch, verify and build the guest kernel and base rootfs, bake base images with OpenClaw
    /// inside, or list the installed ones.
    #[command(subcommand)]
    Image(ImageCommand),
    /// What fireclaw set up on the host for all instances (see: fireclaw host cleanup).
    #[command(subcommand)]
    Host(HostCommand),
    /// Print a shell completion script (e.g. fireclaw completions bash > /etc/bash_completion.d/fireclaw).
    Completions(CompletionsArgs),
    /// This build's version and git commit, and the Firecracker on PATH.
    Version(JsonFlag),
    /// Print a man page (roff): fireclaw(1), or a verb's (fireclaw man setup); or write them all
    /// into a directory.
    #[command(
        after_help = "Examples:\n  fireclaw man setup | man -l -\n  sudo fireclaw man --dir /usr/local/share/man/man1 && sudo mandb -q"
    )]
    Man(ManArgs),
    /// ExecStartPre of the VM unit: bridge, tap, isolation, firewall rules.
    #[command(hide = true, name = "vm-net-up")]
    VmNetUp(NetUpArgs),
    /// ExecStartPost of the VM unit: load a due snapshot, mark it consumed, resume.
    #[command(hide = true, name = "vm-resume")]
    VmResume(InstanceArg),
    /// ExecStop of the VM unit: clean guest shutdown through the API socket.
    #[command(hide = true, name = "vm-shutdown")]
    VmShutdown(InstanceArg),
    /// ExecStopPost of the VM unit: remove the tap and the API socket.
    #[command(hide = true, name = "vm-net-down")]
    VmNetDown(InstanceArg),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
pub struct ExportArgs {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID", conflicts_with = "all")]
    pub id: Option<InstanceId>,
    /// Where the archive goes: a new file (never overwritten), or - for stdout
    /// [default: ./<ID>-<UTC time>.fireclaw].
    #[arg(long, short = 'o', value_name = "FILE|-", conflicts_with = "all", value_parser = parse_file_or_dash)]
    pub output: Option<PathBuf>,
    /// Every instance, each into its own file in --output-dir (for a backup job).
    #[arg(long, requires = "output_dir")]
    pub all: bool,
    /// With --all: the directory the archives go into, as <ID>-<UTC time>.fireclaw.
    #[arg(long, value_name = "DIR", requires = "all", value_parser = parse_file_or_dash)]
    pub output_dir: Option<PathBuf>,
    /// With --all: keep only the newest N archives of each instance in --output-dir.
    #[arg(long, value_name = "N", requires = "all", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
    /// Export a running instance: its guest syncs, its VM pauses while its disk is cloned
    /// (a reflink where the filesystem has them), then runs on; a crash-consistent copy.
    #[arg(long)]
    pub pause: bool,
    /// Add the console and VMM logs.
    #[arg(long)]
    pub with_logs: bool,
    /// Encrypt the archive for this age recipient (an age1... key or an SSH public key);
    /// repeatable.
    #[arg(long, value_name = "KEY")]
    pub recipient: Vec<String>,
    /// Encrypt for every recipient in this file (age's recipients file); repeatable.
    #[arg(long, value_name = "FILE", value_parser = parse_file_or_dash)]
    pub recipients_file: Vec<PathBuf>,
    /// Print what was written as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The archive, or - for stdin.
    #[arg(value_name = "FILE|-", value_parser = parse_file_or_dash)]
    pub archive: PathBuf,
    /// Read and verify the whole archive and print its manifest; change nothing (the restore
    /// drill of a backup).
    #[arg(long)]
    pub check: bool,
    /// The age identity file that decrypts an encrypted archive.
    #[arg(long, value_name = "FILE", value_parser = parse_file_or_dash)]
    pub identity: Option<PathBuf>,
    /// Start the instance once it is made, and wait until healthy.
    #[arg(long, conflicts_with = "check")]
    pub start: bool,
    /// Keep the archive's private-egress allowlist (by default the imported guest gets this
    /// host's default policy: private networks differ between hosts).
    #[arg(long, conflicts_with = "check")]
    pub keep_private_egress: bool,
    /// Print the manifest and what was made as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub waits: WaitArgs,
}

#[derive(Debug, Subcommand)]
pub enum EgressCommand {
    /// The host-wide and per-instance private-egress allowlists, and whether the firewall
    /// matches them.
    Show(JsonFlag),
    /// Rebuild fireclaw's firewall chains from the saved allowlists now (also done at every VM
    /// start).
    Apply,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Once no instance is left: remove the firewall chains and their jumps, the bridge (if
    /// fireclaw made it) and IPv4 forwarding (if fireclaw turned it on); say what stays and why.
    Cleanup,
    /// What placement and inventory need: memory and memory committed to instances, disk free,
    /// free addresses and ports, the instances and their states, versions, KVM, baked images.
    Facts(JsonFlag),
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Download (or copy) a guest kernel and an Ubuntu 24.04 LTS root filesystem into
    /// BASE_IMAGES_DIR as vmlinux and rootfs.ext4, verified, with a manifest beside them.
    Fetch(Box<ImageFetchArgs>),
    /// The images in BASE_IMAGES_DIR and what the manifest records about them.
    List(ImageListArgs),
    /// Build a base image with Docker, the OpenClaw image and (optionally) the browser already
    /// in it, in a temporary builder VM, and install it as <NAME>.ext4 in BASE_IMAGES_DIR; new
    /// instances made from it need no apt, no image pull and no browser download.
    #[command(
        after_help = "Examples:\n  sudo fireclaw image bake --name openclaw-2026.9 --openclaw-image ghcr.io/openclaw/openclaw:2026.9.6\n  sudo fireclaw image bake --name offline --openclaw-image-archive /media/usb/openclaw.tar --skip-browser-install\n  sudo --preserve-env=OPENAI_API_KEY fireclaw setup --instance my-bot --base-image openclaw-2026.9"
    )]
    Bake(Box<ImageBakeArgs>),
}

#[derive(Debug, Args)]
pub struct ImageBakeArgs {
    /// The baked image's name: installed as <NAME>.ext4, used with setup --base-image NAME.
    #[arg(long, value_name = "NAME")]
    pub name: BakeName,
    /// The base rootfs to bake from [env: BASE_ROOTFS] [default: <BASE_IMAGES_DIR>/rootfs.ext4].
    #[arg(long, value_name = "PATH", value_parser = parse_base_image_path)]
    pub from: Option<PathBuf>,
    /// The kernel the builder boots (and instances should use) [env: BASE_KERNEL]
    /// [default: <BASE_IMAGES_DIR>/vmlinux].
    #[arg(long, value_name = "PATH", value_parser = parse_base_image_path)]
    pub kernel: Option<PathBuf>,
    /// The initrd, used when it exists [env: BASE_INITRD] [default: <BASE_IMAGES_DIR>/initrd.img].
    #[arg(long, value_name = "PATH", value_parser = parse_base_image_path)]
    pub initrd: Option<PathBuf>,
    /// The OpenClaw image to bake in [env: OPENCLAW_IMAGE_DEFAULT]
    /// [default: ghcr.io/openclaw/openclaw:latest].
    #[arg(long, value_name = "IMAGE")]
    pub openclaw_image: Option<ImageRef>,
    /// Load the image from this docker-archive or OCI tarball instead of pulling it (for hosts
    /// whose guests cannot reach a registry); tagged as --openclaw-image.
    #[arg(long, value_name = "PATH", value_parser = parse_base_image_path)]
    pub openclaw_image_archive: Option<PathBuf>,
    /// Install Playwright's Chromium into the image, shared by every instance (the default).
    #[arg(long, overrides_with = "skip_browser_install")]
    pub browser_install: bool,
    /// Leave the browser out.
    #[arg(long, overrides_with = "browser_install")]
    pub skip_browser_install: bool,
    /// The builder VM's vCPUs.
    #[arg(long, value_name = "N", default_value = "2")]
    pub vm_vcpu: VcpuCount,
    /// The builder VM's memory in MiB.
    #[arg(long, value_name = "MIB", default_value = "2048")]
    pub vm_mem_mib: MemoryMib,
    /// Images directory [default: $BASE_IMAGES_DIR, else /srv/firecracker/base/images].
    #[arg(long, value_name = "DIR", value_parser = parse_path)]
    pub dir: Option<PathBuf>,
    /// Replace a baked image of the same name.
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait for the builder's SSH after boot (1 to 86400).
    #[arg(long, value_name = "SECS", default_value_t = 360, allow_negative_numbers = true,
          value_parser = parse_wait_seconds)]
    pub ssh_timeout: u64,
    /// Print the baked image's record as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImageFetchArgs {
    /// Images directory [default: $BASE_IMAGES_DIR, else /srv/firecracker/base/images].
    #[arg(long, value_name = "DIR", value_parser = parse_path)]
    pub dir: Option<PathBuf>,
    /// Guest kernel, an uncompressed ELF vmlinux: https://, http:// (loopback, or with
    /// --kernel-sha256), file:// or a path [default: the newest Firecracker CI kernel for the
    /// firecracker on PATH].
    #[arg(long, value_name = "URL|PATH")]
    pub kernel: Option<ImageSource>,
    /// Root filesystem: an xz or plain root tarball (built into ext4) or a raw ext4 image, as
    /// https://, http://, file:// or a path; a signed SHA256SUMS beside it is used when there
    /// [default: the Ubuntu 24.04 LTS cloud image's root tarball].
    #[arg(long, value_name = "URL|PATH")]
    pub rootfs: Option<ImageSource>,
    /// The kernel's expected SHA-256 (Firecracker publishes none; without this the digest is
    /// printed and recorded).
    #[arg(long, value_name = "HEX")]
    pub kernel_sha256: Option<Sha256Hex>,
    /// The rootfs download's expected SHA-256, instead of a signed SHA256SUMS.
    #[arg(long, value_name = "HEX")]
    pub rootfs_sha256: Option<Sha256Hex>,
    /// OpenPGP keyring file (binary, as `gpg --export` writes) whose keys sign SHA256SUMS
    /// [default: Ubuntu's cloud-image signing keys, built in].
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Ubuntu cloud-images release directory (a mirror, or file:// a local copy); plain http://
    /// is fine, since SHA256SUMS is checked by its signature and the tarball by SHA256SUMS
    /// [default: https://cloud-images.ubuntu.com/releases/noble/release/].
    #[arg(long, value_name = "URL", conflicts_with = "rootfs")]
    pub ubuntu_mirror: Option<ImageSource>,
    /// Base URL of the bucket holding Firecracker's CI kernels (an S3 ListObjectsV2 listing)
    /// [default: https://s3.amazonaws.com/spec.ccfc.min].
    #[arg(long, value_name = "URL", conflicts_with = "kernel", value_parser = parse_http_url)]
    pub kernel_index: Option<String>,
    /// An initrd (initramfs) file to install as initrd.img, which setup then uses: one that
    /// loads the virtio drivers a kernel has as modules. Alone, it keeps the kernel and rootfs
    /// already there and adds only the initrd.
    #[arg(long, value_name = "FILE", value_parser = parse_path)]
    pub initrd: Option<PathBuf>,
    /// Replace images that are already there.
    #[arg(long)]
    pub force: bool,
    /// Print the manifest records of the installed images as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImageListArgs {
    /// Images directory [default: $BASE_IMAGES_DIR, else /srv/firecracker/base/images].
    #[arg(long, value_name = "DIR", value_parser = parse_path)]
    pub dir: Option<PathBuf>,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_http_url(value: &str) -> Result<String, String> {
    match value.parse::<ImageSource>() {
        Ok(ImageSource::Url(url)) => Ok(url),
        Ok(ImageSource::File(_)) => Err(format!(
            "'{}' is not an http:// or https:// URL",
            crate::instance::values::escaped(value)
        )),
        Err(e) => Err(e.0),
    }
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The verb whose page to print (image fetch, say) [default: the page of fireclaw itself].
    #[arg(value_name = "VERB", conflicts_with = "dir")]
    pub verbs: Vec<String>,
    /// Write every page (fireclaw.1, fireclaw-setup.1, ...) into DIR, creating it if needed.
    #[arg(long, value_name = "DIR", value_parser = parse_path)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstanceArg {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID")]
    pub id: InstanceId,
}

#[derive(Debug, Args)]
pub struct NetUpArgs {
    /// The instance.
    #[arg(value_name = "ID")]
    pub id: InstanceId,
    /// Run by the VM unit, which can load a snapshot (not by `start-vm.sh`, which cannot).
    #[arg(long)]
    pub in_unit: bool,
}

/// A `logs -n` value: how many lines of history, 0 to a million.
fn parse_line_count(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(lines) if lines <= 1_000_000 => Ok(lines),
        _ => Err("must be a whole number of lines from 0 to 1000000, like 50".to_owned()),
    }
}

/// A wait bound: a whole number of seconds from 1 to a day. Zero would fail every wait before
/// it began, and a negative number is read as one (not as a flag) so it gets this message.
fn parse_wait_seconds(text: &str) -> Result<u64, String> {
    match text.trim().parse::<i64>() {
        Ok(seconds) if (1..=86_400).contains(&seconds) => Ok(seconds.unsigned_abs()),
        Ok(_) => Err("must be between 1 and 86400 seconds".to_owned()),
        Err(_) => Err("must be a whole number of seconds, 1 to 86400".to_owned()),
    }
}

/// Bounds of the waits for SSH and for health (0.2.0: 180 and 30 tries, 2 s apart).
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Seconds to wait for the guest's SSH after boot (1 to 86400).
    #[arg(long, value_name = "SECS", default_value_t = 360, allow_negative_numbers = true,
          value_parser = parse_wait_seconds)]
    pub ssh_timeout: u64,
    /// Seconds to wait for both health gates, guest and proxy (1 to 86400).
    #[arg(long, value_name = "SECS", default_value_t = 60, allow_negative_numbers = true,
          value_parser = parse_wait_seconds)]
    pub health_timeout: u64,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID")]
    pub id: InstanceId,
    #[command(flatten)]
    pub waits: WaitArgs,
    /// Print the result as JSON on stdout, with each step's time.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StartOnlyArgs {
    #[command(flatten)]
    pub start: StartArgs,
    /// Boot from the disk even when the instance is suspended, discarding its snapshot.
    #[arg(long)]
    pub cold: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "all"])))]
pub struct SuspendArgs {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID", conflicts_with = "all")]
    pub id: Option<InstanceId>,
    /// Every running instance, one after another.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "all"])))]
pub struct ResumeArgs {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID", conflicts_with = "all")]
    pub id: Option<InstanceId>,
    /// Every suspended instance, one after another.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub waits: WaitArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The instance (see fireclaw list); omit for the whole fleet.
    #[arg(value_name = "ID")]
    pub id: Option<InstanceId>,
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogSource {
    /// The guest's openclaw-<id> service, over SSH.
    Guest,
    /// The host's VM and proxy units.
    Host,
    /// The VM's serial console (the guest kernel's and init's first words).
    Console,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID")]
    pub id: InstanceId,
    /// Which journal to show.
    #[arg(value_enum, default_value_t = LogSource::Guest)]
    pub source: LogSource,
    /// Lines of history to show first.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 100,
          value_parser = parse_line_count)]
    pub lines: u32,
    /// Only entries since TIME, as journalctl reads it ("1 hour ago", "2026-11-30 08:00", "today").
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<String>,
    /// Print what is there and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
}

/// A `--since` value: what journalctl's time syntax uses, nothing a shell or a second argument
/// could be smuggled in with (the guest's journal is read over SSH).
fn parse_since(text: &str) -> Result<String, String> {
    let text = text.trim();
    let allowed = |c: char| c.is_ascii_alphanumeric() || " :-+.@".contains(c);
    if text.is_empty() || text.len() > 64 || !text.chars().all(allowed) {
        return Err(
            "must be a time journalctl reads, e.g. \"1 hour ago\", \"2026-11-30 08:00\", \"today\""
                .to_owned(),
        );
    }
    Ok(text.to_owned())
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID")]
    pub id: InstanceId,
    /// A command to run instead of an interactive login (a shell string, as with ssh).
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID")]
    pub id: InstanceId,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Do not ask; also clean up an instance whose state cannot be read.
    #[arg(long)]
    pub force: bool,
}

/// Provider API keys. Each falls back to its environment variable, which keeps it out of `ps`.
#[derive(Debug, Clone, Default, Args)]
pub struct KeyArgs {
    /// Anthropic API key [env: ANTHROPIC_API_KEY].
    #[arg(long, value_name = "KEY", value_parser = parse_anthropic_key)]
    pub anthropic_api_key: Option<Secret>,
    /// OpenAI API key [env: OPENAI_API_KEY].
    #[arg(long, value_name = "KEY", value_parser = parse_openai_key)]
    pub openai_api_key: Option<Secret>,
    /// MiniMax API key [env: MINIMAX_API_KEY].
    #[arg(long, value_name = "KEY", value_parser = parse_minimax_key)]
    pub minimax_api_key: Option<Secret>,
}

fn parse_anthropic_key(value: &str) -> Result<Secret, String> {
    Secret::parse("the Anthropic API key", value).map_err(|e| e.0)
}
fn parse_openai_key(value: &str) -> Result<Secret, String> {
    Secret::parse("the OpenAI API key", value).map_err(|e| e.0)
}
fn parse_minimax_key(value: &str) -> Result<Secret, String> {
    Secret::parse("the MiniMax API key", value).map_err(|e| e.0)
}
fn parse_token(value: &str) -> Result<Secret, String> {
    parse_telegram_token(value).map_err(|e| e.0)
}

fn parse_path(value: &str) -> Result<PathBuf, String> {
    parse_absolute_path(value).map_err(|e| e.0)
}

/// A base image flag: a relative path is taken from the working directory, as a shell user
/// means it, and kept absolute (the instance's config records it).
fn parse_base_image_path(value: &str) -> Result<PathBuf, String> {
    let given = std::path::Path::new(value);
    if given.is_absolute() || value.contains(['\n', '\r']) {
        return parse_path(value);
    }
    let cwd = std::env::current_dir()
        .map_err(|e| format!("'{value}' is relative and the working directory is unknown: {e}"))?;
    let mut absolute = PathBuf::new();
    for part in cwd.join(given).components() {
        match part {
            std::path::Component::ParentDir => {
                absolute.pop();
            }
            std::path::Component::CurDir => {}
            other => absolute.push(other),
        }
    }
    parse_path(&absolute.to_string_lossy())
}

/// A file argument of `export` and `import`: `-` (stdout or stdin) as it is, any other path
/// made absolute as a shell user means it.
fn parse_file_or_dash(value: &str) -> Result<PathBuf, String> {
    if value == "-" {
        return Ok(PathBuf::from("-"));
    }
    parse_base_image_path(value)
}

#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    /// Instance id ([a-z0-9_-]+).
    #[arg(long, value_name = "ID")]
    pub instance: InstanceId,
    /// Telegram bot token; omit for a local-only gateway with Telegram disabled.
    #[arg(long, value_name = "TOKEN", value_parser = parse_token)]
    pub telegram_token: Option<Secret>,
    /// Allowed Telegram user ids (comma-separated); required with --telegram-token.
    #[arg(long, value_name = "CSV")]
    pub telegram_users: Option<TelegramUsers>,
    /// OpenClaw model; its provider's API key must be set [env: MODEL] [default: openai/gpt-5.5].
    #[arg(long, value_name = "MODEL")]
    pub model: Option<Model>,
    /// Skill set [env: SKILLS] [default: github,tmux,coding-agent,session-logs,skill-creator].
    #[arg(long, value_name = "CSV")]
    pub skills: Option<Skills>,
    /// Container image [env: OPENCLAW_IMAGE_DEFAULT] [default: ghcr.io/openclaw/openclaw:latest].
    #[arg(long, value_name = "IMAGE")]
    pub openclaw_image: Option<ImageRef>,
    /// When to pull the image: always, missing (use one already in the guest) or never
    /// [default: always]. Saved for later provision runs.
    #[arg(long, value_name = "POLICY")]
    pub openclaw_pull: Option<PullPolicy>,
    /// Localhost proxy port (>= 1024) [default: first free port above BASE_PORT].
    #[arg(long, value_name = "PORT")]
    pub host_port: Option<HostPort>,
    /// vCPUs [env: VM_VCPU] [default: 4].
    #[arg(long, value_name = "N")]
    pub vm_vcpu: Option<VcpuCount>,
    /// Memory in MiB [env: VM_MEM_MIB] [default: 8192].
    #[arg(long, value_name = "MIB")]
    pub vm_mem_mib: Option<MemoryMib>,
    /// Rootfs size, e.g. 40G or 512M [env: DISK_SIZE] [default: 40G].
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<DiskSize>,
    /// Firecracker API socket [env: API_SOCK] [default: <FC_ROOT>/<id>/firecracker.socket].
    #[arg(long, value_name = "PATH", value_parser = parse_path)]
    pub api_sock: Option<PathBuf>,
    /// Guest kernel [env: BASE_KERNEL] [default: <BASE_IMAGES_DIR>/vmlinux].
    #[arg(long, value_name = "PATH", value_parser = parse_base_image_path)]
    pub base_kernel: Option<PathBuf>,
    /// Base rootfs [env: BASE_ROOTFS] [default: <BASE_IMAGES_DIR>/rootfs.ext4].
    #[arg(long, value_name = "PATH", value_parser = parse_base_image_path)]
    pub base_rootfs: Option<PathBuf>,
    /// A baked base image (fireclaw image bake --name NAME): <BASE_IMAGES_DIR>/NAME.ext4, with
    /// its OpenClaw image used as it is (pull policy missing) unless told otherwise.
    #[arg(long, value_name = "NAME", conflicts_with = "base_rootfs")]
    pub base_image: Option<BakeName>,
    /// With a baked base: check its file's SHA-256 against its record too, not only its size
    /// (reads the whole file).
    #[arg(long)]
    pub verify_base_sha256: bool,
    /// Initrd, used when it exists [env: BASE_INITRD] [default: <BASE_IMAGES_DIR>/initrd.img].
    #[arg(long, value_name = "PATH", value_parser = parse_base_image_path)]
    pub base_initrd: Option<PathBuf>,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Skip installing Playwright Chromium in the guest.
    #[arg(long)]
    pub skip_browser_install: bool,
    /// Private networks this guest may reach, as CIDRs inside 10.0.0.0/8, 172.16.0.0/12,
    /// 192.168.0.0/16 or 100.64.0.0/10 (comma-separated); the rest of those ranges stays blocked.
    #[arg(long, value_name = "CIDRS")]
    pub allow_private_egress: Option<PrivateEgress>,
    /// Print the allocation and every file setup would write, then exit; needs no root and
    /// changes nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result (or, with --dry-run, the preview) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub waits: WaitArgs,
    /// `apply`'s own: the API keys and the bot token as NAME=value lines on stdin, as if given
    /// as flags (never on the command line).
    #[arg(long, hide = true)]
    pub secrets_stdin: bool,
    /// `apply`'s own: record that apply made this instance (so it may finish, re-create or
    /// prune it).
    #[arg(long, hide = true)]
    pub managed_by_apply: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ProvisionArgs {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID")]
    pub id: InstanceId,
    /// New Telegram bot token (enables Telegram).
    #[arg(long, value_name = "TOKEN", value_parser = parse_token, conflicts_with = "no_telegram")]
    pub telegram_token: Option<Secret>,
    /// Disable Telegram and forget the saved bot token.
    #[arg(long)]
    pub no_telegram: bool,
    /// Allowed Telegram user ids (comma-separated).
    #[arg(long, value_name = "CSV", conflicts_with = "no_telegram")]
    pub telegram_users: Option<TelegramUsers>,
    /// OpenClaw model; its provider's API key must be saved or given.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<Model>,
    /// Skill set (comma-separated).
    #[arg(long, value_name = "CSV")]
    pub skills: Option<Skills>,
    /// Container image.
    #[arg(long, value_name = "IMAGE")]
    pub openclaw_image: Option<ImageRef>,
    /// When to pull the image from now on: always, missing (use one already in the guest) or
    /// never.
    #[arg(long, value_name = "POLICY")]
    pub openclaw_pull: Option<PullPolicy>,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Skip installing Playwright Chromium in the guest from now on.
    #[arg(long, conflicts_with = "browser_install")]
    pub skip_browser_install: bool,
    /// Install Playwright Chromium again (undoes --skip-browser-install).
    #[arg(long)]
    pub browser_install: bool,
    /// Replace the private networks this guest may reach (comma-separated CIDRs; '' clears).
    /// Applied to the firewall at once, without a restart.
    #[arg(long, value_name = "CIDRS")]
    pub allow_private_egress: Option<PrivateEgress>,
    #[command(flatten)]
    pub waits: WaitArgs,
    /// Print the result as JSON on stdout, with each step's time.
    #[arg(long)]
    pub json: bool,
    /// `apply`'s own: the API keys and the bot token as NAME=value lines on stdin, as if given
    /// as flags (never on the command line).
    #[arg(long, hide = true)]
    pub secrets_stdin: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ResizeArgs {
    /// The instance (see fireclaw list).
    #[arg(value_name = "ID")]
    pub id: InstanceId,
    /// vCPUs the VM gets.
    #[arg(long, value_name = "N")]
    pub vm_vcpu: Option<VcpuCount>,
    /// Memory the VM gets, in MiB.
    #[arg(long, value_name = "MIB")]
    pub vm_mem_mib: Option<MemoryMib>,
    /// Grow the disk to this size (never smaller than it is); the guest grows its filesystem
    /// at its next boot.
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<DiskSize>,
    #[command(flatten)]
    pub waits: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// The file declaring this host's instances (TOML: one [instances.<id>] table each).
    #[arg(long, short = 'f', value_name = "FILE", value_parser = parse_base_image_path)]
    pub file: PathBuf,
    /// Print the plan and change nothing; exit 1 when a planned action would fail.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove instances the file does not name, when apply made them (never 0.2.0 or
    /// hand-made ones); each is exported to --backup-dir first.
    #[arg(long)]
    pub prune: bool,
    /// How many instances are worked on at once.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub jobs: u32,
    /// Print the plan, or what was done, as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where an instance is exported before apply removes it [default: STATE_ROOT/backups].
    #[arg(long, value_name = "DIR", value_parser = parse_base_image_path)]
    pub backup_dir: Option<PathBuf>,
    /// Remove instances without exporting them first.
    #[arg(long, conflicts_with = "backup_dir")]
    pub no_backup: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn logs_default_to_the_guest() {
        let cli = Cli::try_parse_from(["fireclaw", "logs", "a"]).unwrap();
        let Command::Logs(args) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(args.source, LogSource::Guest);
    }

    #[test]
    fn shell_keeps_the_command_words_in_order() {
        let cli =
            Cli::try_parse_from(["fireclaw", "shell", "a", "docker ps | head", "-n"]).unwrap();
        let Command::Shell(args) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(args.command, ["docker ps | head", "-n"]);
    }

    #[test]
    fn provision_refuses_contradictory_flags() {
        for args in [
            [
                "fireclaw",
                "provision",
                "a",
                "--no-telegram",
                "--telegram-token",
                "1:x",
            ],
            [
                "fireclaw",
                "provision",
                "a",
                "--skip-browser-install",
                "--browser-install",
                "--no-telegram",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
