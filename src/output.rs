//! The one place that writes to the terminal. Commands print through an `Output`, so tests can
//! capture what a person would see, and modules below the command layer never print.

use std::io::Write;

pub struct Output<'a> {
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
}

impl<'a> Output<'a> {
    pub fn new(stdout: &'a mut dyn Write, stderr: &'a mut dyn Write) -> Self {
        Self { stdout, stderr }
    }

    /// Results: what a script may read from stdout.
    pub fn line(&mut self, text: &str) {
        // A closed stdout (e.g. `| head`) is not worth failing a command over.
        let _ = writeln!(self.stdout, "{text}");
    }

    pub fn text(&mut self, text: &str) {
        let _ = self.stdout.write_all(text.as_bytes());
    }

    /// A one-line error on stderr, flushed at once.
    pub fn error(&mut self, text: &str) {
        let _ = writeln!(self.stderr, "fireclaw: {text}");
        let _ = self.stderr.flush();
    }

    /// A progress line on stderr, so stdout stays the command's result.
    pub fn progress(&mut self, text: &str) {
        let _ = writeln!(self.stderr, "==> {text}");
    }

    /// A question on stderr, without a newline.
    pub fn prompt(&mut self, text: &str) {
        let _ = write!(self.stderr, "{text}");
        let _ = self.stderr.flush();
    }

    /// A one-line warning on stderr.
    pub fn warn(&mut self, text: &str) {
        let _ = writeln!(self.stderr, "warning: {text}");
    }
}
