//! The name of every environment variable fireclaw reads, defined once. Host-wide settings and
//! flag defaults are 0.2.0's names and are resolved in `settings`; the rest are read where they
//! apply: test fault injection (`faults`), systemd's marker of a unit's process, the colour
//! switch and `PATH`; last, the few the test harness reads.

/// Per-instance state dirs, the allocation lock and the lifecycle locks.
pub const STATE_ROOT: &str = "STATE_ROOT";
/// Per-instance VM assets.
pub const FC_ROOT: &str = "FC_ROOT";
/// Auto-allocated host ports start one above it.
pub const BASE_PORT: &str = "BASE_PORT";
pub const BRIDGE_NAME: &str = "BRIDGE_NAME";
pub const BRIDGE_ADDR: &str = "BRIDGE_ADDR";
pub const SUBNET_CIDR: &str = "SUBNET_CIDR";
/// The SSH client key new instances are created with.
pub const SSH_KEY_PATH: &str = "SSH_KEY_PATH";
pub const BASE_IMAGES_DIR: &str = "BASE_IMAGES_DIR";
/// Seconds a command waits for another one holding the same instance's lock.
pub const FIRECLAW_LOCK_WAIT: &str = "FIRECLAW_LOCK_WAIT";

// Defaults of `setup`'s flags.
pub const MODEL: &str = "MODEL";
pub const SKILLS: &str = "SKILLS";
pub const VM_VCPU: &str = "VM_VCPU";
pub const VM_MEM_MIB: &str = "VM_MEM_MIB";
pub const DISK_SIZE: &str = "DISK_SIZE";
pub const API_SOCK: &str = "API_SOCK";
pub const OPENCLAW_IMAGE_DEFAULT: &str = "OPENCLAW_IMAGE_DEFAULT";
pub const BASE_KERNEL: &str = "BASE_KERNEL";
pub const BASE_ROOTFS: &str = "BASE_ROOTFS";
pub const BASE_INITRD: &str = "BASE_INITRD";
pub const ANTHROPIC_API_KEY: &str = "ANTHROPIC_API_KEY";
pub const OPENAI_API_KEY: &str = "OPENAI_API_KEY";
pub const MINIMAX_API_KEY: &str = "MINIMAX_API_KEY";
/// Set by sudo to the user who ran it: a missing provider key then gets sudo's advice.
pub const SUDO_USER: &str = "SUDO_USER";

/// Names the step at which fireclaw kills itself (reliability tests; see `faults`).
pub const FIRECLAW_TEST_CRASH_AT: &str = "FIRECLAW_TEST_CRASH_AT";
/// Set by systemd for a unit's processes: a helper run as a unit's Exec line behaves as one.
pub const INVOCATION_ID: &str = "INVOCATION_ID";
/// Set by systemd for `ExecStop=`: the PID of the unit's main process (the VMM).
pub const MAINPID: &str = "MAINPID";
/// The VM unit's Firecracker arguments after `--api-sock` (`--config-file ...` or none before
/// a snapshot load), from the file `vm-net-up` writes.
pub const FIRECLAW_VMM_BOOT: &str = "FIRECLAW_VMM_BOOT";
/// Any value turns colour off (no-color.org).
pub const NO_COLOR: &str = "NO_COLOR";
/// Where host tools are looked up.
pub const PATH: &str = "PATH";

// Read by the test harness and the stand-ins, never by fireclaw itself.
/// Where the sandbox binds the binaries under test (default `/opt/fireclaw-test/bin`).
pub const FIRECLAW_TEST_BIN: &str = "FIRECLAW_TEST_BIN";
/// A Firecracker binary to record in the units instead of the stand-in.
pub const FIRECLAW_TEST_FIRECRACKER: &str = "FIRECLAW_TEST_FIRECRACKER";
/// A guest kernel and rootfs for the opt-in real-Firecracker test.
pub const FIRECLAW_TEST_KERNEL: &str = "FIRECLAW_TEST_KERNEL";
pub const FIRECLAW_TEST_ROOTFS: &str = "FIRECLAW_TEST_ROOTFS";
/// Where `scripts/test-deps` caches the real parts the tests use (cloud-init, Node, OpenClaw).
pub const FIRECLAW_TEST_CACHE: &str = "FIRECLAW_TEST_CACHE";
/// Set to 1 by `scripts/openclaw-goldens`: the real-OpenClaw config test writes its goldens
/// with the per-key path instead of comparing the one-patch path with them.
pub const FIRECLAW_WRITE_OPENCLAW_GOLDENS: &str = "FIRECLAW_WRITE_OPENCLAW_GOLDENS";
