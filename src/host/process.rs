//! Running external programs. A failure becomes `CommandFailed` with the program, its
//! arguments (secrets redacted), the exit status and the trimmed end of stderr, so an error
//! says what was run and why it failed. Each program runs in a process group of its own, so a
//! Ctrl-C at the terminal reaches fireclaw alone, which lets the step finish.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("run {program}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} {args} failed ({status}){stderr}")]
    CommandFailed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
}

/// Arguments as one line, with any of `secrets` replaced.
pub fn redacted_args(args: &[&str], secrets: &[&str]) -> String {
    args.iter()
        .map(|arg| {
            let mut shown = (*arg).to_owned();
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                shown = shown.replace(secret, "<redacted>");
            }
            shown
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.chars().take(400).collect::<String>())
    }
}

/// Runs `program` with `args`, stdin closed, and returns its output whatever the status.
pub fn run(program: &str, args: &[&str]) -> Result<Output, ProcessError> {
    Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ProcessError::Spawn {
            program: program.to_owned(),
            source,
        })
}

/// Runs `program` and fails unless it exits 0; returns stdout.
pub fn run_checked(program: &str, args: &[&str]) -> Result<String, ProcessError> {
    let output = run(program, args)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(failed(program, args, &output, &[]))
}

/// Runs `program` with `input` on stdin and fails unless it exits 0.
pub fn run_checked_with_input(
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<(), ProcessError> {
    use std::io::Write;
    let spawn_error = |source| ProcessError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(input.as_bytes()))
        .unwrap_or(Ok(()));
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        written.map_err(spawn_error)
    } else {
        Err(failed(program, args, &output, &[]))
    }
}

pub fn failed(program: &str, args: &[&str], output: &Output, secrets: &[&str]) -> ProcessError {
    let mut stderr = stderr_tail(&output.stderr);
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        stderr = stderr.replace(secret, "<redacted>");
    }
    ProcessError::CommandFailed {
        program: program.to_owned(),
        args: redacted_args(args, secrets),
        status: output.status.to_string(),
        stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command_and_keep_secrets_out() {
        let output = run("sh", &["-c", "echo one >&2; echo token-123 >&2; exit 3"]).unwrap();
        let err = failed("sh", &["-c", "uses token-123"], &output, &["token-123"]);
        let text = err.to_string();
        assert_eq!(
            text,
            "sh -c uses <redacted> failed (exit status: 3): one / <redacted>"
        );
    }

    #[test]
    fn success_returns_stdout_and_spawn_errors_name_the_program() {
        assert_eq!(run_checked("sh", &["-c", "echo hi"]).unwrap(), "hi\n");
        let err = run_checked("/nonexistent/fireclaw-no-such", &[]).unwrap_err();
        let line = crate::output::error_chain(&err);
        assert!(
            line.starts_with("run /nonexistent/fireclaw-no-such: No such file"),
            "{line}"
        );
    }
}
