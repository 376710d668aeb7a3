//! The test log: plain lines on stderr in the nixpkgs driver's shape
//! (`<machine>: message`, `<machine> # console line`, nested blocks closed by
//! `(finished: <msg>, in X.XX seconds)`), what the script prints on stdout,
//! an optional copy of both in a file, and the subtests collected for the
//! JUnit XML.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One subtest's result, for the JUnit XML.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub time: Duration,
    pub failure: Option<String>,
}

struct Inner {
    file: Option<File>,
    /// Open nested blocks: message, start time, whether it is a subtest.
    stack: Vec<(String, Instant, bool)>,
    cases: Vec<TestCase>,
    serial_stdout: bool,
    quiet: bool,
}

/// The shared logger; cheap to clone.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Log {
    fn default() -> Self {
        Log::new()
    }
}

impl Log {
    /// A logger writing to stderr only.
    pub fn new() -> Log {
        Log {
            inner: Arc::new(Mutex::new(Inner {
                file: None,
                stack: Vec::new(),
                cases: Vec::new(),
                serial_stdout: true,
                quiet: false,
            })),
        }
    }

    /// A logger that prints nothing (benchmarks); the file copy and subtests still work.
    pub fn quiet() -> Log {
        let log = Log::new();
        log.lock().quiet = true;
        log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while logging must not take the whole log down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Also writes every line to `path`.
    pub fn tee_to(&self, path: &Path) -> std::io::Result<()> {
        let file = File::create(path)?;
        self.lock().file = Some(file);
        Ok(())
    }

    fn write_line(inner: &mut Inner, line: &str, to_terminal: bool) {
        let indent = "  ".repeat(inner.stack.len());
        if to_terminal && !inner.quiet {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{indent}{line}");
        }
        if let Some(f) = inner.file.as_mut() {
            let _ = writeln!(f, "{indent}{line}");
        }
    }

    /// A line of the driver's own.
    pub fn info(&self, msg: &str) {
        let mut inner = self.lock();
        for line in msg.lines() {
            Self::write_line(&mut inner, line, true);
        }
    }

    /// What the test script prints (`print()`, its subprocesses' output):
    /// on stdout as it is, where nixpkgs' driver, which runs the script in
    /// its own process, has it, and in the log file in order with the log.
    pub fn stdout(&self, text: &[u8]) {
        let mut inner = self.lock();
        if !inner.quiet {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text);
            let _ = out.flush();
        }
        if let Some(f) = inner.file.as_mut() {
            let _ = f.write_all(text);
        }
    }

    /// `<machine>: msg`.
    pub fn machine(&self, machine: &str, msg: &str) {
        self.info(&format!("{machine}: {msg}"));
    }

    /// `<machine> # line`, a line of a machine's serial console.
    pub fn console(&self, machine: &str, line: &str) {
        let mut inner = self.lock();
        let show = inner.serial_stdout;
        Self::write_line(&mut inner, &format!("{machine} # {line}"), show);
    }

    /// Whether console lines reach the terminal (`serial_stdout_on/off`).
    pub fn set_serial_stdout(&self, on: bool) {
        self.lock().serial_stdout = on;
    }

    /// Opens a nested block.
    pub fn begin(&self, msg: &str) {
        self.open(msg, false);
    }

    /// Opens a subtest: a nested block that becomes a JUnit test case.
    pub fn begin_subtest(&self, name: &str) {
        self.open(&format!("subtest: {name}"), true);
    }

    fn open(&self, msg: &str, subtest: bool) {
        let mut inner = self.lock();
        Self::write_line(&mut inner, msg, true);
        inner.stack.push((msg.to_string(), Instant::now(), subtest));
    }

    /// Closes the innermost block; `failure` marks a subtest as failed.
    pub fn end(&self, failure: Option<&str>) {
        let mut inner = self.lock();
        let Some((msg, start, subtest)) = inner.stack.pop() else {
            return;
        };
        let elapsed = start.elapsed();
        let line = format!("(finished: {msg}, in {:.2} seconds)", elapsed.as_secs_f64());
        Self::write_line(&mut inner, &line, true);
        if subtest {
            inner.cases.push(TestCase {
                name: msg.trim_start_matches("subtest: ").to_string(),
                time: elapsed,
                failure: failure.map(str::to_string),
            });
        }
    }

    /// Closes every open block (the script ended inside them).
    pub fn end_all(&self, failure: Option<&str>) {
        while !self.lock().stack.is_empty() {
            self.end(failure);
        }
    }

    /// The subtests so far.
    pub fn cases(&self) -> Vec<TestCase> {
        self.lock().cases.clone()
    }

    /// Writes the JUnit XML: one test case per subtest, or one for the whole
    /// script when it had no subtests.
    pub fn write_junit(
        &self,
        path: &Path,
        suite: &str,
        total: Duration,
        failure: Option<&str>,
    ) -> std::io::Result<()> {
        let mut cases = self.cases();
        if cases.is_empty() {
            cases.push(TestCase {
                name: suite.to_string(),
                time: total,
                failure: failure.map(str::to_string),
            });
        }
        let failures = cases.iter().filter(|c| c.failure.is_some()).count();
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        xml.push_str(&format!(
            "<testsuites><testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">\n",
            xml_escape(suite),
            cases.len(),
            failures,
            total.as_secs_f64()
        ));
        for c in &cases {
            xml.push_str(&format!(
                "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                xml_escape(suite),
                xml_escape(&c.name),
                c.time.as_secs_f64()
            ));
            match &c.failure {
                Some(f) => xml.push_str(&format!(
                    "><failure message=\"{}\">{}</failure></testcase>\n",
                    xml_escape(f.lines().next().unwrap_or("")),
                    xml_escape(f)
                )),
                None => xml.push_str("/>\n"),
            }
        }
        xml.push_str("</testsuite></testsuites>\n");
        std::fs::write(path, xml)
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_text_goes_to_the_log_file_in_order_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = Log::quiet();
        log.tee_to(&path).unwrap();
        log.begin("block");
        log.stdout(b"printed, ");
        log.stdout(b"not indented\n");
        log.info("logged");
        log.end(None);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("block"));
        assert_eq!(lines.next(), Some("printed, not indented"));
        assert_eq!(lines.next(), Some("  logged"));
    }

    #[test]
    fn subtests_become_junit_cases_with_failures() {
        let log = Log::quiet();
        log.begin_subtest("boots");
        log.begin("inner");
        log.end(None);
        log.end(None);
        log.begin_subtest("serves <html>");
        log.end(Some("command `curl` failed"));
        let dir = std::env::temp_dir().join(format!("nix-vmtest-junit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("junit.xml");
        log.write_junit(&path, "t", Duration::from_secs(1), None)
            .unwrap();
        let xml = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
        assert!(xml.contains("name=\"serves &lt;html&gt;\""), "{xml}");
        assert!(
            xml.contains("<failure message=\"command `curl` failed\">"),
            "{xml}"
        );
    }
}
