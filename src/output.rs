//! The one place that writes to the terminal. Commands print through an `Output`, so tests can
//! capture what a person would see, and modules below the command layer never print. On a
//! terminal, long waits show a live line (a spinner and the seconds waited) that the next line
//! replaces; off a terminal the same wait is written as a whole line when it starts and every
//! few seconds after, so a log shows what was waited for, its bound, and that it went on.

use std::io::Write;

/// An error with lines a person reads under it: `main` prints the error's one line, then
/// these, each on its own indented line (the evidence of a failed setup, what to do next).
#[derive(Debug)]
pub struct Detailed {
    pub summary: String,
    pub lines: Vec<String>,
    /// Kept as anyhow's own error, so its causes stay what they were: an `Interrupted` at its
    /// root is still found by a downcast (a boxed conversion would hide it).
    source: anyhow::Error,
}

impl std::fmt::Display for Detailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl std::error::Error for Detailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let inner: &(dyn std::error::Error + Send + Sync + 'static) = &*self.source;
        Some(inner)
    }
}

impl Detailed {
    /// `error` under `summary`, with `lines` to print after it.
    pub fn wrap(summary: String, lines: Vec<String>, error: anyhow::Error) -> anyhow::Error {
        anyhow::Error::from(Self {
            summary,
            lines,
            source: error,
        })
    }
}

/// Every detail line an error chain carries, outermost first.
pub fn detail_lines(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut lines = Vec::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        if let Some(detailed) = cause.downcast_ref::<Detailed>() {
            lines.extend(detailed.lines.iter().cloned());
        }
        next = cause.source();
    }
    lines
}

/// The command already printed its error; `main` only sets the exit code.
#[derive(Debug, thiserror::Error)]
#[error("error already reported")]
pub struct AlreadyReported;

const FRAMES: [char; 4] = ['|', '/', '-', '\\'];

/// Off a terminal, how often a wait that goes on is written again.
const PLAIN_TICK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Output<'a> {
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
    live: bool,
    frame: usize,
    ticking: bool,
    /// Off a terminal: when the current wait was last written (`None`: not yet).
    last_plain_tick: Option<std::time::Instant>,
    /// Off a terminal: a wait was written and has not ended yet (its end gets a line).
    plain_wait_open: bool,
    /// `-q`: no progress lines and no waits, only results, warnings and errors.
    quiet: bool,
}

impl<'a> Output<'a> {
    pub fn new(stdout: &'a mut dyn Write, stderr: &'a mut dyn Write) -> Self {
        Self {
            stdout,
            stderr,
            live: false,
            frame: 0,
            ticking: false,
            last_plain_tick: None,
            plain_wait_open: false,
            quiet: false,
        }
    }

    /// `-q`: progress and waits are not written.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Enables the live line (only when stderr is a terminal).
    pub fn with_live_progress(mut self, live: bool) -> Self {
        self.live = live;
        self
    }

    /// Ends the live line, if one is showing, so what is written next starts a line.
    pub fn clear_live_line(&mut self) {
        self.end_tick();
        let _ = self.stderr.flush();
    }

    fn end_tick(&mut self) {
        if self.ticking {
            let _ = write!(self.stderr, "\r\x1b[2K");
            self.ticking = false;
        }
    }

    /// Results: what a script may read from stdout.
    pub fn line(&mut self, text: &str) {
        self.end_tick();
        // A closed stdout (e.g. `| head`) is not worth failing a command over.
        let _ = writeln!(self.stdout, "{text}");
    }

    pub fn text(&mut self, text: &str) {
        self.end_tick();
        let _ = self.stdout.write_all(text.as_bytes());
    }

    /// A one-line error on stderr, flushed at once.
    pub fn error(&mut self, text: &str) {
        self.end_tick();
        let _ = writeln!(self.stderr, "fireclaw: {text}");
        let _ = self.stderr.flush();
    }

    /// A progress line on stderr, so stdout stays the command's result.
    pub fn progress(&mut self, text: &str) {
        self.end_tick();
        self.last_plain_tick = None;
        self.plain_wait_open = false;
        if self.quiet {
            return;
        }
        let _ = writeln!(self.stderr, "==> {text}");
    }

    /// Redraws the live line during a wait; off a terminal, writes it as a whole line at the
    /// wait's first tick and then every `PLAIN_TICK_EVERY`.
    pub fn tick(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        if !self.live {
            let due = self
                .last_plain_tick
                .is_none_or(|last| last.elapsed() >= PLAIN_TICK_EVERY);
            if due {
                let _ = writeln!(self.stderr, "    {text}");
                let _ = self.stderr.flush();
                self.last_plain_tick = Some(std::time::Instant::now());
                self.plain_wait_open = true;
            }
            return;
        }
        self.frame = (self.frame + 1) % FRAMES.len();
        let _ = write!(self.stderr, "\r\x1b[2K{} {text}", FRAMES[self.frame]);
        let _ = self.stderr.flush();
        self.ticking = true;
    }

    /// The end of a wait: off a terminal, where the wait was written as lines, a line that says
    /// it ended (a log shows it ended, not just that it was going on); on a terminal the live
    /// line just goes.
    pub fn wait_done(&mut self, text: &str) {
        self.end_tick();
        if self.plain_wait_open && !self.quiet {
            let _ = writeln!(self.stderr, "    {text}");
            let _ = self.stderr.flush();
        }
        self.plain_wait_open = false;
        self.last_plain_tick = None;
    }

    /// A question on stderr, without a newline.
    pub fn prompt(&mut self, text: &str) {
        self.end_tick();
        let _ = write!(self.stderr, "{text}");
        let _ = self.stderr.flush();
    }

    /// Runs `work` on a thread of its own and, when it takes more than a second, shows `text`
    /// as a progress line meanwhile: no command sits silent for long, and a quick one says
    /// nothing extra.
    pub fn announce_if_slow<T: Send>(&mut self, text: &str, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let (done, finished) = std::sync::mpsc::channel();
            let worker = scope.spawn(move || {
                let value = work();
                let _ = done.send(());
                value
            });
            if finished
                .recv_timeout(std::time::Duration::from_secs(1))
                .is_err()
            {
                self.progress(text);
            }
            match worker.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A one-line warning on stderr.
    pub fn warn(&mut self, text: &str) {
        self.end_tick();
        let _ = writeln!(self.stderr, "warning: {text}");
    }
}

/// An error and its causes on one line, outermost first, each cause once: `what failed: why:
/// why that`. This is the only place causes are joined. A message names its own operation and
/// subject and never embeds its source (the source travels through `source()`), so walking
/// the chain prints every cause exactly once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

/// Whether stdout gets colour: only on a terminal, and never with `NO_COLOR` set.
pub fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os(crate::env_vars::NO_COLOR).is_none()
}

impl Drop for Output<'_> {
    fn drop(&mut self) {
        self.end_tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detailed_error_keeps_its_causes_findable_and_its_lines() {
        let interrupted = anyhow::Error::from(crate::host::interrupt::Interrupted);
        let wrapped = Detailed::wrap(
            "setup of 'a' was interrupted".into(),
            vec!["kept for you: x".into()],
            interrupted,
        )
        .context("outer");
        assert!(crate::host::interrupt::caused(&wrapped));
        assert_eq!(detail_lines(wrapped.as_ref()), ["kept for you: x"]);
        let chain: Vec<String> = wrapped.chain().map(ToString::to_string).collect();
        assert_eq!(chain[..2], ["outer", "setup of 'a' was interrupted"]);
    }

    #[test]
    fn off_a_terminal_a_wait_that_was_written_ends_with_a_line_and_no_control_codes() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        {
            let mut output = Output::new(&mut out, &mut err);
            output.progress("a: waiting for SSH");
            output.tick("a: waiting for SSH (0s of 360s)");
            output.wait_done("a: SSH answered after 52s");
            // A wait that never showed needs no end line.
            output.wait_done("a: nothing");
        }
        let err = String::from_utf8(err).unwrap();
        assert_eq!(
            err,
            "==> a: waiting for SSH\n    a: waiting for SSH (0s of 360s)\n    a: SSH answered after 52s\n"
        );
        assert!(!err.contains('\r') && !err.contains('\x1b'));
    }

    #[test]
    fn off_a_terminal_only_whole_lines_are_written_and_a_wait_is_not_repeated_at_once() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        {
            let mut output = Output::new(&mut out, &mut err);
            output.progress("a: waiting for SSH");
            output.tick("a: waiting for SSH (0s of 360s)");
            output.tick("a: waiting for SSH (1s of 360s)");
            output.line("done");
            // A new step's wait is written at its first tick again.
            output.progress("a: waiting for health");
            output.tick("a: waiting for health (0s of 60s)");
        }
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "==> a: waiting for SSH\n    a: waiting for SSH (0s of 360s)\n\
             ==> a: waiting for health\n    a: waiting for health (0s of 60s)\n"
        );
        assert_eq!(String::from_utf8(out).unwrap(), "done\n");
    }

    #[test]
    fn quiet_keeps_results_warnings_and_errors_only() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        {
            let mut output = Output::new(&mut out, &mut err)
                .with_live_progress(true)
                .quiet(true);
            output.progress("a: booting the VM");
            output.tick("a: waiting for SSH (0s of 360s)");
            output.warn("the VM asks for more memory than the host has");
            output.line("Instance a is healthy.");
            output.error("it broke");
        }
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "warning: the VM asks for more memory than the host has\nfireclaw: it broke\n"
        );
        assert_eq!(String::from_utf8(out).unwrap(), "Instance a is healthy.\n");
    }

    #[test]
    fn on_a_terminal_the_live_line_is_replaced_by_the_next_one() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        {
            let mut output = Output::new(&mut out, &mut err).with_live_progress(true);
            output.tick("waiting 2s");
            output.progress("next");
        }
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "\r\x1b[2K/ waiting 2s\r\x1b[2K==> next\n"
        );
    }
}
