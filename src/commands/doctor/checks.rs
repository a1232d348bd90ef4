//! What every doctor check reports: its name, a level (pass, warn, fail, or skip when only root could check it) and one line of
//! detail; serialised as is into `doctor --json`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Fail,
    /// Not checked: only root can (doctor run as a plain user).
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Level,
    pub detail: String,
}

pub fn check(name: &str, status: Level, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        status,
        detail: detail.into(),
    }
}
