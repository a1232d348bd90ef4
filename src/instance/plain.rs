//! The `plain-v1` file format of fireclaw 0.2.0 (`.env`, `provision.vars`): one `KEY=value` per
//! line, the value being everything after the first `=`, blank and `#` lines ignored, the last
//! occurrence of a key winning. A document keeps its original lines so an unchanged file is
//! written back byte for byte, and a changed key only replaces its own line.

use super::values::{escaped, reject_line_breaks};

/// Written as the first line by 0.2.0 and by us.
pub const FORMAT_KEY: &str = "FIRECLAW_STATE_FORMAT";
pub const FORMAT_VALUE: &str = "plain-v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    #[error("line {line}: '{}' is not KEY=value", escaped(text))]
    NotAnAssignment { line: usize, text: String },
    #[error("line {line}: unknown key '{}'", escaped(key))]
    UnknownKey { line: usize, key: String },
    #[error("line {line}: {key} is '{}', expected {expected}", escaped(value))]
    UnsupportedFormat {
        line: usize,
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("value of {key} contains a newline, carriage return or NUL")]
    LineBreakInValue { key: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// Blank, comment, or anything kept verbatim.
    Verbatim(String),
    Entry {
        key: String,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainDoc {
    lines: Vec<Line>,
    trailing_newline: bool,
}

impl PlainDoc {
    /// An empty document that starts with the format line.
    pub fn new() -> Self {
        Self {
            lines: vec![Line::Entry {
                key: FORMAT_KEY.to_owned(),
                value: FORMAT_VALUE.to_owned(),
            }],
            trailing_newline: true,
        }
    }

    /// Parses leniently, as 0.2.0 reads: any key order, duplicates allowed (last wins). Keys
    /// outside `allowed` are an error, as they are for 0.2.0, because writing the file back would
    /// otherwise carry a key 0.2.0 refuses. The format line, when present, must say `plain-v1`.
    pub fn parse(text: &str, allowed: &[&str]) -> Result<Self, PlainError> {
        let trailing_newline = text.ends_with('\n');
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut lines = Vec::new();
        if !text.is_empty() {
            for (index, raw) in body.split('\n').enumerate() {
                let number = index + 1;
                let trimmed = raw.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    lines.push(Line::Verbatim(raw.to_owned()));
                    continue;
                }
                let Some((key, value)) = raw.split_once('=') else {
                    return Err(PlainError::NotAnAssignment {
                        line: number,
                        text: raw.chars().take(40).collect(),
                    });
                };
                if key == FORMAT_KEY {
                    if value != FORMAT_VALUE {
                        return Err(PlainError::UnsupportedFormat {
                            line: number,
                            key: key.to_owned(),
                            value: value.chars().take(40).collect(),
                            expected: FORMAT_VALUE,
                        });
                    }
                } else if !allowed.contains(&key) {
                    return Err(PlainError::UnknownKey {
                        line: number,
                        key: key.chars().take(40).collect(),
                    });
                }
                lines.push(Line::Entry {
                    key: key.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
        Ok(Self {
            lines,
            trailing_newline,
        })
    }

    /// The value of the last occurrence of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().rev().find_map(|line| match line {
            Line::Entry { key: k, value } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// Sets `key`: an unchanged value leaves the document untouched; otherwise the last line of
    /// the key is replaced in place and earlier duplicates are dropped, or the key is appended.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), PlainError> {
        reject_line_breaks(key, value).map_err(|_| PlainError::LineBreakInValue {
            key: key.to_owned(),
        })?;
        if self.get(key) == Some(value) {
            return Ok(());
        }
        let last = self
            .lines
            .iter()
            .rposition(|line| matches!(line, Line::Entry { key: k, .. } if k == key));
        match last {
            Some(position) => {
                self.lines[position] = Line::Entry {
                    key: key.to_owned(),
                    value: value.to_owned(),
                };
                let mut index = 0;
                self.lines.retain(|line| {
                    let keep = index >= position
                        || !matches!(line, Line::Entry { key: k, .. } if k == key);
                    index += 1;
                    keep
                });
            }
            None => self.lines.push(Line::Entry {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
        }
        Ok(())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (index, line) in self.lines.iter().enumerate() {
            if index > 0 {
                out.push('\n');
            }
            match line {
                Line::Verbatim(text) => out.push_str(text),
                Line::Entry { key, value } => {
                    out.push_str(key);
                    out.push('=');
                    out.push_str(value);
                }
            }
        }
        if self.trailing_newline && !self.lines.is_empty() {
            out.push('\n');
        }
        out
    }

    /// Keys present, in file order, each once.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for line in &self.lines {
            if let Line::Entry { key, .. } = line
                && !keys.contains(&key.as_str())
            {
                keys.push(key);
            }
        }
        keys
    }
}

impl Default for PlainDoc {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["A", "B", "C"];

    #[test]
    fn last_occurrence_wins_and_order_is_free() {
        let doc = PlainDoc::parse("B=2\nA=1\n# note\n\nA=3\n", KEYS).unwrap();
        assert_eq!(doc.get("A"), Some("3"));
        assert_eq!(doc.get("B"), Some("2"));
        assert_eq!(doc.get("C"), None);
    }

    #[test]
    fn value_is_everything_after_the_first_equals() {
        let doc = PlainDoc::parse("A=x=y=\nB=\n", KEYS).unwrap();
        assert_eq!(doc.get("A"), Some("x=y="));
        assert_eq!(doc.get("B"), Some(""));
    }

    #[test]
    fn unchanged_document_round_trips_byte_for_byte() {
        for text in [
            "FIRECLAW_STATE_FORMAT=plain-v1\nA=1\nB=2\n",
            "A=1\n\n# c\nA=2\nB=3",
            "",
            "A= spaced \n",
        ] {
            let mut doc = PlainDoc::parse(text, KEYS).unwrap();
            assert_eq!(doc.render(), text);
            if let Some(a) = doc.get("A").map(str::to_owned) {
                doc.set("A", &a).unwrap();
            }
            assert_eq!(
                doc.render(),
                text,
                "setting an unchanged value changed the file"
            );
        }
    }

    #[test]
    fn set_replaces_the_line_in_place_and_drops_older_duplicates() {
        let mut doc = PlainDoc::parse("A=1\nB=2\nA=3\nC=4\n", KEYS).unwrap();
        doc.set("A", "9").unwrap();
        assert_eq!(doc.render(), "B=2\nA=9\nC=4\n");
        doc.set("B", "").unwrap();
        assert_eq!(doc.render(), "B=\nA=9\nC=4\n");
        let mut doc = PlainDoc::parse("A=1\n", KEYS).unwrap();
        doc.set("C", "5").unwrap();
        assert_eq!(doc.render(), "A=1\nC=5\n");
    }

    #[test]
    fn unknown_keys_and_malformed_lines_are_errors_with_line_numbers() {
        assert_eq!(
            PlainDoc::parse("A=1\nZ=2\n", KEYS),
            Err(PlainError::UnknownKey {
                line: 2,
                key: "Z".into()
            })
        );
        assert!(matches!(
            PlainDoc::parse("A=1\njunk\n", KEYS),
            Err(PlainError::NotAnAssignment { line: 2, .. })
        ));
        assert!(matches!(
            PlainDoc::parse("FIRECLAW_STATE_FORMAT=json\n", KEYS),
            Err(PlainError::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn values_with_line_breaks_are_refused() {
        let mut doc = PlainDoc::new();
        assert!(doc.set("A", "x\ny").is_err());
        assert!(doc.set("A", "x\ry").is_err());
        assert!(doc.set("A", "x\0y").is_err());
        assert_eq!(doc.render(), "FIRECLAW_STATE_FORMAT=plain-v1\n");
    }
}
