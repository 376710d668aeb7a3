//! The test log: plain lines on stderr in the nixpkgs driver's shape
//! (`<machine>: message`, `<machine> # console line`, nested blocks closed by
//! `(finished: <msg>, in X.XX seconds)`), what the script prints on stdout,
//! an optional copy of both in a file, nixpkgs' XML log (`$LOGFILE`), and
//! the subtests collected for the JUnit XML.
//!
//! Lines have nixpkgs' levels: most lines (a machine's messages, nested
//! blocks, the failure report) are written whatever the level, as nixpkgs'
//! `logger.log` does; [`Log::at`] writes a line only at or above the level
//! `--log-level` set ([`Log::set_level`]), as nixpkgs' `logger.info`,
//! `debug`, `warning` and `error` do.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much the driver says, as nixpkgs' `--log-level` (`LogLevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, clap::ValueEnum)]
pub enum Level {
    /// Also the driver's machinery (VLAN switches).
    Debug,
    /// The default: also the run's progress (accelerator, timings, kills).
    #[default]
    Info,
    /// Only what needs attention.
    Warning,
    /// Only errors (and the lines every level has).
    Error,
}

/// One subtest's result, for the JUnit XML.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub time: Duration,
    pub failure: Option<String>,
}

struct Inner {
    file: Option<File>,
    /// nixpkgs' XML log (`$LOGFILE`), when asked for.
    xml: Option<XmlLog>,
    level: Level,
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
                xml: None,
                level: Level::Info,
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

    /// Also writes the log as nixpkgs' `XMLLogger` does (`<logfile>` of
    /// `<line>`s and `<nest>`s), to `path`: what `$LOGFILE` asks for.
    /// `/dev/null` (what nixpkgs' `run.nix` sets) writes nothing.
    pub fn xml_to(&self, path: &Path) -> std::io::Result<()> {
        let xml = XmlLog::create(path)?;
        self.lock().xml = Some(xml);
        Ok(())
    }

    /// Ends the XML log (closes its open blocks and `<logfile>`); later
    /// lines no longer go there. Done on drop too.
    pub fn finish(&self) {
        self.lock().xml = None;
    }

    /// Sets the level below which [`Log::at`] writes nothing.
    pub fn set_level(&self, level: Level) {
        self.lock().level = level;
    }

    /// The level set by [`Log::set_level`].
    pub fn level(&self) -> Level {
        self.lock().level
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

    /// A line of the driver's own, written at every level (nixpkgs'
    /// `logger.log`).
    pub fn info(&self, msg: &str) {
        let mut inner = self.lock();
        for line in msg.lines() {
            Self::write_line(&mut inner, line, true);
            if let Some(x) = inner.xml.as_mut() {
                x.line(line, None, false);
            }
        }
    }

    /// A line written only when `level` is at or above the level set
    /// (nixpkgs' `logger.debug`, `info`, `warning`, `error`).
    pub fn at(&self, level: Level, msg: &str) {
        if level >= self.level() {
            self.info(msg);
        }
    }

    /// `<machine>: msg`, only when `level` is at or above the level set.
    pub fn machine_at(&self, level: Level, machine: &str, msg: &str) {
        if level >= self.level() {
            self.machine(machine, msg);
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
        let mut inner = self.lock();
        for line in format!("{machine}: {msg}").lines() {
            Self::write_line(&mut inner, line, true);
        }
        if let Some(x) = inner.xml.as_mut() {
            for line in msg.lines() {
                x.line(line, Some(machine), false);
            }
        }
    }

    /// `<machine> # line`, a line of a machine's serial console.
    pub fn console(&self, machine: &str, line: &str) {
        let mut inner = self.lock();
        let show = inner.serial_stdout;
        Self::write_line(&mut inner, &format!("{machine} # {line}"), show);
        if show {
            if let Some(x) = inner.xml.as_mut() {
                x.line(line, Some(machine), true);
            }
        }
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
        if let Some(x) = inner.xml.as_mut() {
            x.open(msg);
        }
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
        if let Some(x) = inner.xml.as_mut() {
            x.line(&line, None, false);
            x.close();
        }
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

/// nixpkgs' XML log: `<logfile>` holding `<line>`s (attribute `machine`
/// for a machine's lines, plus `type="serial"` for its console) and, per
/// nested block, `<nest><head>message</head>…</nest>`.
struct XmlLog {
    /// `None` for `/dev/null`: nothing to write.
    file: Option<std::io::BufWriter<File>>,
    open: usize,
}

impl XmlLog {
    fn create(path: &Path) -> std::io::Result<XmlLog> {
        let file = if path == Path::new("/dev/null") {
            None
        } else {
            Some(std::io::BufWriter::new(File::create(path)?))
        };
        let mut x = XmlLog { file, open: 0 };
        x.write("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<logfile>");
        Ok(x)
    }

    fn write(&mut self, text: &str) {
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(text.as_bytes());
        }
    }

    fn line(&mut self, msg: &str, machine: Option<&str>, serial: bool) {
        let mut attrs = String::new();
        if let Some(m) = machine {
            attrs.push_str(&format!(" machine=\"{}\"", xml_escape(m)));
        }
        if serial {
            attrs.push_str(" type=\"serial\"");
        }
        self.write(&format!("<line{attrs}>{}</line>", xml_escape(msg)));
    }

    fn open(&mut self, msg: &str) {
        self.open += 1;
        self.write(&format!("<nest><head>{}</head>", xml_escape(msg)));
    }

    fn close(&mut self) {
        if self.open > 0 {
            self.open -= 1;
            self.write("</nest>");
        }
    }
}

impl Drop for XmlLog {
    fn drop(&mut self) {
        while self.open > 0 {
            self.close();
        }
        self.write("</logfile>\n");
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush();
        }
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
    fn levels_filter_only_the_leveled_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = Log::quiet();
        log.tee_to(&path).unwrap();
        log.set_level(Level::Warning);
        log.at(Level::Debug, "debug line");
        log.at(Level::Info, "info line");
        log.machine_at(Level::Info, "m", "info machine line");
        log.at(Level::Warning, "warning line");
        log.at(Level::Error, "error line");
        log.info("always");
        log.machine("m", "always too");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text, "warning line\nerror line\nalways\nm: always too\n",
            "{text}"
        );
    }

    #[test]
    fn the_xml_log_has_nixpkgs_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.xml");
        let log = Log::quiet();
        log.xml_to(&path).unwrap();
        log.begin("start <all>");
        log.machine("server", "starting vm");
        log.console("server", "boot \x1b[1mok");
        log.begin("never closed");
        log.finish();
        log.info("after the end");
        let xml = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<logfile>\
             <nest><head>start &lt;all&gt;</head>\
             <line machine=\"server\">starting vm</line>\
             <line machine=\"server\" type=\"serial\">boot [1mok</line>\
             <nest><head>never closed</head></nest></nest></logfile>\n"
        );
        // `/dev/null`, as nixpkgs' run.nix sets it: nothing to write.
        let log = Log::quiet();
        log.xml_to(Path::new("/dev/null")).unwrap();
        log.info("x");
        log.finish();
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
