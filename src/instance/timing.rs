//! How long each step of `setup`, `provision` and `start` took: the record kept in
//! `fireclaw.json` (`last_provisioning`), shown by `status` and in each verb's `--json`, and the
//! guest provisioning script's own step lines (`fireclaw-step: <name>=<seconds>`) it is built
//! from. Times are whole milliseconds, so the record compares and round-trips exactly.

use std::time::Duration;

/// One step and its wall time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepTime {
    pub name: String,
    pub ms: u64,
}

impl StepTime {
    pub fn new(name: &str, took: Duration) -> Self {
        Self {
            name: name.to_owned(),
            ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The verb a run of steps belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimedVerb {
    Setup,
    Provision,
    Start,
    Resume,
}

impl TimedVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Provision => "provision",
            Self::Start => "start",
            Self::Resume => "resume",
        }
    }
}

/// One run of a verb: when it ended, whether it succeeded, its total and its steps in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunTimes {
    pub verb: TimedVerb,
    /// UTC, RFC 3339.
    pub finished_at: String,
    pub ok: bool,
    pub total_ms: u64,
    pub steps: Vec<StepTime>,
}

impl RunTimes {
    /// One line for a person or a journal: `setup took 312.4 s: boot to SSH 52.1 s, ...`.
    pub fn describe(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|step| format!("{} {}", step.name, seconds(step.ms)))
            .collect();
        format!(
            "{} {} {}: {}",
            self.verb.as_str(),
            if self.ok { "took" } else { "failed after" },
            seconds(self.total_ms),
            if steps.is_empty() {
                "no step finished".to_owned()
            } else {
                steps.join(", ")
            }
        )
    }
}

/// `52.1 s`.
pub fn seconds(ms: u64) -> String {
    format!("{}.{} s", ms / 1000, (ms % 1000) / 100)
}

/// The step lines the provisioning script printed on stdout (`fireclaw-step: name=12.3`), in
/// order. Anything else on stdout, and a line whose time does not parse, is skipped.
pub fn guest_steps(stdout: &str) -> Vec<StepTime> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("fireclaw-step: "))
        .filter_map(|step| {
            let (name, secs) = step.rsplit_once('=')?;
            let (whole, tenths) = secs.trim().split_once('.').unwrap_or((secs.trim(), "0"));
            let whole: u64 = whole.parse().ok()?;
            let tenths: u64 = tenths.get(..1).unwrap_or("0").parse().ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| StepTime {
                name: name.to_owned(),
                ms: whole.saturating_mul(1000).saturating_add(tenths * 100),
            })
        })
        .collect()
}

/// A `fireclaw-fact: key=value` line the provisioning script printed, by key.
pub fn guest_fact<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("fireclaw-fact: "))
        .filter_map(|fact| fact.split_once('='))
        .find(|(name, _)| *name == key)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_are_read_in_order_and_everything_else_is_skipped() {
        let stdout = "noise\nfireclaw-step: cloud-init=3.4\nfireclaw-step: openclaw config=61.0\n\
                      fireclaw-fact: config_path=patch\nfireclaw-step: broken=x.y\n\
                      fireclaw-step: gateway service=0.25\nfireclaw-step: =1.0\n";
        assert_eq!(
            guest_steps(stdout),
            vec![
                StepTime {
                    name: "cloud-init".into(),
                    ms: 3400
                },
                StepTime {
                    name: "openclaw config".into(),
                    ms: 61000
                },
                StepTime {
                    name: "gateway service".into(),
                    ms: 200
                },
            ]
        );
        assert_eq!(guest_fact(stdout, "config_path"), Some("patch"));
        assert_eq!(guest_fact(stdout, "image_id"), None);
    }

    #[test]
    fn a_run_reads_as_one_line_and_round_trips_as_json() {
        let run = RunTimes {
            verb: TimedVerb::Setup,
            finished_at: "2026-12-07T12:00:00Z".into(),
            ok: true,
            total_ms: 312_449,
            steps: vec![
                StepTime::new("boot to SSH", Duration::from_millis(52_130)),
                StepTime::new("health", Duration::from_millis(3_000)),
            ],
        };
        assert_eq!(
            run.describe(),
            "setup took 312.4 s: boot to SSH 52.1 s, health 3.0 s"
        );
        let text = serde_json::to_string(&run).unwrap();
        assert_eq!(serde_json::from_str::<RunTimes>(&text).unwrap(), run);
        let failed = RunTimes {
            ok: false,
            steps: vec![],
            ..run
        };
        assert_eq!(
            failed.describe(),
            "setup failed after 312.4 s: no step finished"
        );
    }
}
