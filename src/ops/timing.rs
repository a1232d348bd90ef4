//! The stopwatch `setup`, `provision`, `start` and `resume` run their steps under: each host
//! step timed as it runs, the guest's provisioning steps added from the script's own lines, and
//! the whole run recorded (`fireclaw.json` for setup and provision), written into the guest's
//! journal beside the provisioning steps, and shown in `--json`.

use std::time::{Instant, SystemTime};

use crate::guest::ssh::{GuestShell, sudo_command};
use crate::instance::images::rfc3339_utc;
use crate::instance::timing::{RunTimes, StepTime, TimedVerb};

/// The steps of one run so far.
#[derive(Debug)]
pub struct Stopwatch {
    verb: TimedVerb,
    began: Instant,
    steps: Vec<StepTime>,
}

impl Stopwatch {
    pub fn new(verb: TimedVerb) -> Self {
        Self {
            verb,
            began: Instant::now(),
            steps: Vec::new(),
        }
    }

    /// Runs `step` and records its wall time under `name`, whether it succeeds or not.
    pub fn time<T>(&mut self, name: &str, step: impl FnOnce() -> T) -> T {
        let began = Instant::now();
        let result = step();
        self.steps.push(StepTime::new(name, began.elapsed()));
        result
    }

    /// Steps measured elsewhere (the guest's), in their order.
    pub fn extend(&mut self, steps: Vec<StepTime>) {
        self.steps.extend(steps);
    }

    /// The run so far, as it would be recorded now.
    pub fn finish(&self, ok: bool) -> RunTimes {
        RunTimes {
            verb: self.verb,
            finished_at: rfc3339_utc(SystemTime::now()),
            ok,
            total_ms: u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX),
            steps: self.steps.clone(),
        }
    }
}

/// The run as JSON for a verb's `--json`: `{"total_ms", "steps": [{"name", "ms"}]}`.
pub fn times_json(run: &RunTimes) -> serde_json::Value {
    serde_json::json!({
        "total_ms": run.total_ms,
        "steps": run.steps,
    })
}

/// Writes the run into the guest's journal under the provisioning script's tag, so the host's
/// steps (boot to SSH, health) sit beside the guest's own. Best effort: the guest just passed
/// its health gate, and a journal line is not worth failing a healthy run over.
pub fn note_in_guest(guest: &dyn GuestShell, run: &RunTimes) {
    let _ = guest.run(
        &sudo_command(&[
            "logger",
            "-t",
            "fireclaw-provision",
            "--",
            &format!("fireclaw {}", run.describe()),
        ]),
        b"",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fakes::{CallLog, FakeGuest};

    #[test]
    fn each_step_is_timed_in_order_and_the_guest_journal_gets_one_line() {
        let mut watch = Stopwatch::new(TimedVerb::Start);
        let value = watch.time("boot to SSH", || 7);
        assert_eq!(value, 7);
        watch.extend(vec![StepTime {
            name: "cloud-init".into(),
            ms: 1200,
        }]);
        let failed: Result<(), &str> = watch.time("health", || Err("down"));
        assert!(failed.is_err());
        let run = watch.finish(false);
        let names: Vec<&str> = run.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["boot to SSH", "cloud-init", "health"]);
        assert!(!run.ok);
        let json = times_json(&run);
        assert_eq!(json["steps"][1]["ms"], 1200);

        let log = CallLog::default();
        let guest = FakeGuest::answering(&log);
        note_in_guest(&guest, &run);
        let calls = log.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert!(
            calls[0].starts_with(
                "ssh sudo logger -t fireclaw-provision -- 'fireclaw start failed after"
            ),
            "{calls:?}"
        );
        assert!(calls[0].contains("cloud-init 1.2 s"), "{calls:?}");
    }
}
