//! systemd, behind the small `ServiceManager` trait through which every host `systemctl` and
//! `journalctl` call goes (unit tests supply a recording fake). `Systemctl` drives the real one through `systemctl`; unit states for many
//! units come from one batched `systemctl show`.

use super::process::{ProcessError, run_checked};

pub const SYSTEMCTL: &str = "systemctl";
pub const JOURNALCTL: &str = "journalctl";

/// What fireclaw reads about a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub name: String,
    /// `LoadState`: loaded, not-found, ...
    pub load: String,
    /// `ActiveState`: active, activating, inactive, failed, ...
    pub active: String,
    /// `SubState`: running, auto-restart, dead, ...
    pub sub: String,
    /// `UnitFileState`: enabled, disabled, ...
    pub file: String,
    pub main_pid: u32,
    pub restarts: u32,
    /// `InactiveExitTimestampMonotonic`: when the unit last left `inactive` (µs since boot),
    /// which `Restart=` cycles do not move; 0 when it never did.
    pub started_us: u64,
    /// `ExecMainStartTimestampMonotonic`: when its current (or last) main process started.
    pub main_started_us: u64,
}

/// A unit whose service restarted more than this many times ...
pub const CRASH_LOOP_RESTARTS: u32 = 3;
/// ... within this many seconds is crash-looping.
pub const CRASH_LOOP_WINDOW_SECS: u64 = 600;

impl UnitState {
    pub fn is_active(&self) -> bool {
        self.active == "active"
    }

    /// Whether systemd keeps restarting the unit's service: more than CRASH_LOOP_RESTARTS
    /// restarts in CRASH_LOOP_WINDOW_SECS (on average over the time since the unit was
    /// started, since systemd counts restarts from then), the latest of them within that
    /// window. A VM that restarted a few times over weeks, or crash-looped once and has run
    /// fine since, is not. `now_us` is the monotonic clock, as systemd's timestamps.
    pub fn crash_looping(&self, now_us: u64) -> bool {
        if self.restarts <= CRASH_LOOP_RESTARTS || self.started_us == 0 {
            return false;
        }
        let window_us = CRASH_LOOP_WINDOW_SECS * 1_000_000;
        let since_start = now_us.saturating_sub(self.started_us);
        // restarts / since_start > CRASH_LOOP_RESTARTS / window, without division.
        let fast = u128::from(self.restarts) * u128::from(window_us)
            > u128::from(CRASH_LOOP_RESTARTS) * u128::from(since_start.max(1));
        // Between two runs (auto-restart) or starting again (activating: its start-pre steps
        // run, and its main process has no start time yet) the loop is going on now.
        let restarting = self.sub == "auto-restart" || self.active == "activating";
        let recent = restarting
            || (self.main_started_us != 0
                && now_us.saturating_sub(self.main_started_us) < window_us);
        fast && recent
    }
    pub fn exists(&self) -> bool {
        self.load != "not-found" && !self.load.is_empty()
    }
}

pub trait ServiceManager {
    fn daemon_reload(&self) -> Result<(), ProcessError>;
    fn enable_now(&self, units: &[&str]) -> Result<(), ProcessError>;
    fn stop(&self, units: &[&str]) -> Result<(), ProcessError>;
    fn disable(&self, units: &[&str]) -> Result<(), ProcessError>;
    fn reset_failed(&self, units: &[&str]) -> Result<(), ProcessError>;
    /// States of `units`, in the same order, from one query.
    fn states(&self, units: &[&str]) -> Result<Vec<UnitState>, ProcessError>;
    /// Queues a stop without waiting for it: how a unit's own helper stops that unit.
    fn queue_stop(&self, units: &[&str]) -> Result<(), ProcessError>;
    /// The unit's last `lines` journal lines, one per line; empty when none can be read.
    fn journal_tail(&self, unit: &str, lines: u32) -> String;
    /// The command that shows (and follows) the units' journal as `query` asks (`logs host`
    /// execs it, so Ctrl-C ends it cleanly).
    fn journal_command(&self, units: &[&str], query: &JournalQuery) -> std::process::Command;
}

/// What `logs` asks of a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalQuery {
    /// Lines of history shown first.
    pub lines: u32,
    /// Only entries since this time, in a form journalctl reads (`@<epoch>`, `1 hour ago`).
    pub since: Option<String>,
    /// Keep following new entries.
    pub follow: bool,
}

impl JournalQuery {
    /// journalctl's arguments for `units`, without the program name.
    pub fn args(&self, units: &[&str]) -> Vec<String> {
        let mut args = vec!["-n".to_owned(), self.lines.to_string()];
        if self.follow {
            args.push("-f".to_owned());
        } else {
            args.push("--no-pager".to_owned());
        }
        if let Some(since) = &self.since {
            args.push(format!("--since={since}"));
        }
        for unit in units {
            args.push(format!("--unit={unit}"));
        }
        args
    }
}

/// The host's systemd through `systemctl`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Systemctl;

fn systemctl(verb: &[&str], units: &[&str]) -> Result<(), ProcessError> {
    if units.is_empty() {
        return Ok(());
    }
    let mut args: Vec<&str> = verb.to_vec();
    args.extend(units);
    run_checked(SYSTEMCTL, &args).map(|_| ())
}

const SHOW_PROPERTIES: &str = "Id,LoadState,ActiveState,SubState,UnitFileState,MainPID,NRestarts,InactiveExitTimestampMonotonic,ExecMainStartTimestampMonotonic";

/// The monotonic clock in µs, as systemd's `...TimestampMonotonic` properties count.
pub fn monotonic_now_us() -> u64 {
    // SAFETY: timespec is plain data, valid for the write clock_gettime does.
    let now = unsafe {
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now);
        now
    };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1000
}

/// Parses `systemctl show -p ...` output for several units: blocks separated by blank lines.
pub fn parse_show(text: &str) -> Vec<UnitState> {
    let mut states = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut state = UnitState::default();
        for line in block.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "Id" => state.name = value.to_owned(),
                "LoadState" => state.load = value.to_owned(),
                "ActiveState" => state.active = value.to_owned(),
                "SubState" => state.sub = value.to_owned(),
                "UnitFileState" => state.file = value.to_owned(),
                "MainPID" => state.main_pid = value.parse().unwrap_or(0),
                "NRestarts" => state.restarts = value.parse().unwrap_or(0),
                "InactiveExitTimestampMonotonic" => {
                    state.started_us = value.parse().unwrap_or(0);
                }
                "ExecMainStartTimestampMonotonic" => {
                    state.main_started_us = value.parse().unwrap_or(0);
                }
                _ => {}
            }
        }
        states.push(state);
    }
    states
}

impl ServiceManager for Systemctl {
    fn daemon_reload(&self) -> Result<(), ProcessError> {
        run_checked(SYSTEMCTL, &["daemon-reload"]).map(|_| ())
    }
    fn enable_now(&self, units: &[&str]) -> Result<(), ProcessError> {
        systemctl(&["enable", "--now"], units)
    }
    fn stop(&self, units: &[&str]) -> Result<(), ProcessError> {
        systemctl(&["stop"], units)
    }
    fn disable(&self, units: &[&str]) -> Result<(), ProcessError> {
        systemctl(&["disable"], units)
    }
    fn reset_failed(&self, units: &[&str]) -> Result<(), ProcessError> {
        // Nothing to reset is not an error worth reporting.
        let mut args = vec!["reset-failed"];
        args.extend(units);
        let _ = super::process::run(SYSTEMCTL, &args)?;
        Ok(())
    }
    fn states(&self, units: &[&str]) -> Result<Vec<UnitState>, ProcessError> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["show", "-p", SHOW_PROPERTIES];
        args.extend(units);
        let text = run_checked(SYSTEMCTL, &args)?;
        let mut states = parse_show(&text);
        // systemctl prints blocks in argument order; make the mapping explicit anyway.
        for (state, unit) in states.iter_mut().zip(units) {
            if state.name.is_empty() {
                state.name = (*unit).to_owned();
            }
        }
        Ok(states)
    }
    fn queue_stop(&self, units: &[&str]) -> Result<(), ProcessError> {
        systemctl(&["--no-block", "stop"], units)
    }
    fn journal_tail(&self, unit: &str, lines: u32) -> String {
        let lines = lines.to_string();
        let args = ["-u", unit, "-n", lines.as_str(), "--no-pager", "-o", "cat"];
        match super::process::run(JOURNALCTL, &args) {
            Ok(output) => String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n"),
            Err(_) => String::new(),
        }
    }
    fn journal_command(&self, units: &[&str], query: &JournalQuery) -> std::process::Command {
        let mut command = std::process::Command::new(JOURNALCTL);
        command.arg("--no-hostname").args(query.args(units));
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_queries_become_journalctl_arguments() {
        let follow = JournalQuery {
            lines: 100,
            since: None,
            follow: true,
        };
        assert_eq!(
            follow.args(&["a.service"]),
            ["-n", "100", "-f", "--unit=a.service"]
        );
        let once = JournalQuery {
            lines: 5,
            since: Some("@1700000000".into()),
            follow: false,
        };
        assert_eq!(
            once.args(&["a.service", "b.service"]),
            [
                "-n",
                "5",
                "--no-pager",
                "--since=@1700000000",
                "--unit=a.service",
                "--unit=b.service"
            ]
        );
    }

    #[test]
    fn a_unit_is_crash_looping_only_when_it_restarts_fast_and_lately() {
        const MIN: u64 = 60_000_000;
        let unit = |restarts: u32, started_min: u64, main_started_min: u64, sub: &str| UnitState {
            active: "active".into(),
            sub: sub.into(),
            restarts,
            started_us: started_min * MIN,
            main_started_us: main_started_min * MIN,
            ..UnitState::default()
        };
        let now = 1000 * MIN;
        // The newcomer's VM: 16 restarts in 10 minutes, one every ~38 s.
        assert!(unit(16, 990, 999, "running").crash_looping(now));
        // Waiting between two of them.
        assert!(unit(16, 990, 999, "auto-restart").crash_looping(now));
        // Four restarts in the first two minutes: already more than three.
        assert!(unit(4, 998, 999, "running").crash_looping(now));
        // Three is the limit, not a loop.
        assert!(!unit(3, 999, 999, "running").crash_looping(now));
        // A few restarts over weeks (reboots in the guest) are not a loop.
        assert!(!unit(5, 10, 999, "running").crash_looping(now));
        // It looped, then has run fine for an hour since.
        assert!(!unit(40, 900, 940, "running").crash_looping(now));
        // Never started: nothing to judge.
        assert!(!unit(9, 0, 0, "dead").crash_looping(now));
        // Caught starting again, its start-pre steps running and no main process yet.
        let starting = UnitState {
            active: "activating".into(),
            ..unit(4, 998, 0, "start-pre")
        };
        assert!(starting.crash_looping(now));
    }

    #[test]
    fn batched_show_output_is_split_per_unit() {
        let text = "Id=a.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\nMainPID=42\nNRestarts=1\nInactiveExitTimestampMonotonic=7000000\nExecMainStartTimestampMonotonic=9000000\n\nId=b.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\nMainPID=0\nNRestarts=0\n";
        let states = parse_show(text);
        assert_eq!(states.len(), 2);
        assert!(states[0].is_active() && states[0].exists());
        assert_eq!((states[0].main_pid, states[0].restarts), (42, 1));
        assert_eq!(
            (states[0].started_us, states[0].main_started_us),
            (7_000_000, 9_000_000)
        );
        assert_eq!(states[1].name, "b.service");
        assert!(!states[1].exists());
    }
}
