//! Reading `fireclaw doctor --json`: one check by name.

/// The check called `name` in a `doctor --json` report; panics, showing the report, when
/// there is none.
pub fn check_named(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
        .clone()
}
