//! The one place that writes to the terminal. Commands print through an `Output`, so tests can
//! capture what a person would see, and modules below the command layer never print. On a
//! terminal, long waits show a live line (a spinner and the seconds waited) that the next line
//! replaces; off a terminal nothing but whole lines is written.

use std::io::Write;

/// The command already printed its error; `main` only sets the exit code.
#[derive(Debug, thiserror::Error)]
#[error("error already reported")]
pub struct AlreadyReported;

const FRAMES: [char; 4] = ['|', '/', '-', '\\'];

pub struct Output<'a> {
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
    live: bool,
    frame: usize,
    ticking: bool,
}

impl<'a> Output<'a> {
    pub fn new(stdout: &'a mut dyn Write, stderr: &'a mut dyn Write) -> Self {
        Self {
            stdout,
            stderr,
            live: false,
            frame: 0,
            ticking: false,
        }
    }

    /// Enables the live line (only when stderr is a terminal).
    pub fn with_live_progress(mut self, live: bool) -> Self {
        self.live = live;
        self
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
        let _ = writeln!(self.stderr, "==> {text}");
    }

    /// Redraws the live line during a wait; does nothing off a terminal.
    pub fn tick(&mut self, text: &str) {
        if !self.live {
            return;
        }
        self.frame = (self.frame + 1) % FRAMES.len();
        let _ = write!(self.stderr, "\r\x1b[2K{} {text}", FRAMES[self.frame]);
        let _ = self.stderr.flush();
        self.ticking = true;
    }

    /// A question on stderr, without a newline.
    pub fn prompt(&mut self, text: &str) {
        self.end_tick();
        let _ = write!(self.stderr, "{text}");
        let _ = self.stderr.flush();
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
    fn off_a_terminal_only_whole_lines_are_written() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        {
            let mut output = Output::new(&mut out, &mut err);
            output.progress("a: waiting for SSH");
            output.tick("waiting 2s");
            output.line("done");
        }
        assert_eq!(String::from_utf8(err).unwrap(), "==> a: waiting for SSH\n");
        assert_eq!(String::from_utf8(out).unwrap(), "done\n");
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
