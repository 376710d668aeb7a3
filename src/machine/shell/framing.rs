//! A command's framing: how it goes to the guest (the records of the
//! serve loop, bash quoting, and the rewrites that make a command run as
//! under `bash -c` with as few forks as possible), and how its answer comes
//! back (the header, then the output: with it, in acknowledged chunks, or
//! in a file of the shared directory).

use std::collections::HashSet;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{Ending, Outcome, Shell, ShellError, CHUNK};

/// Bytes as a `printf` format that writes exactly them (bash's `printf`
/// turns `\xHH` into the byte; nothing else in the format is special).
pub(super) fn printf_format(bytes: &[u8]) -> String {
    let mut f = String::with_capacity(bytes.len() * 4);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"./_-:".contains(&b) {
            f.push(b as char);
        } else {
            f.push_str(&format!("\\x{b:02x}"));
        }
    }
    f
}

/// Single-quotes a string for bash.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether a command may leave asynchronous subshells behind (`&` other
/// than in `&&`, `>&`, `<&`, `&>`; `coproc`; process substitution): those
/// run one subshell deeper in the guest, which costs a fork; everything
/// else runs in one.
pub fn may_background(command: &str) -> bool {
    command.contains("coproc")
        || command.contains(">(")
        || command.contains("<(")
        || command
            .replace("&&", "")
            .replace(">&", "")
            .replace("<&", "")
            .replace("&>", "")
            .contains('&')
}

/// `command` with its last part run by `exec`, when that part is one
/// plain simple command whose name bash does not resolve itself: the
/// command's subshell then becomes the program instead of forking it once
/// more (`bash -c` does this on its own, but bash does not after `eval`),
/// which halves the forks of most commands. `None` unless that is certain:
/// the part must be words of letters, digits and `_-./:=,+%@~^*?[]`,
/// single-quoted strings, and double-quoted ones without `$`, `` ` `` or
/// `\`; its first word a plain name, not an assignment, and not in
/// `shell_names`. The status is the same either way (127 for a missing
/// program, with bash's `exec: … not found` on the console).
pub fn exec_form(command: &str, shell_names: &HashSet<String>) -> Option<String> {
    const PREFIX: &str = crate::machine::USER_COMMAND_PREFIX;
    let (prefix, body) = match command.strip_prefix(PREFIX) {
        Some(rest) => (PREFIX, rest),
        None => ("", command),
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=,+%@~^".contains(c);
    let body = body.trim_matches([' ', '\t']);
    let name = body.split([' ', '\t']).next()?;
    if name.is_empty()
        || name.starts_with('-')
        || name.contains('=')
        || !name.chars().all(plain)
        || shell_names.contains(name)
    {
        return None;
    }
    // Inside single quotes anything goes; inside double quotes anything
    // but what expands there.
    let mut quote = None;
    for c in body.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if "$`\\".contains(c) => return None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if !(plain(c) || " \t*?[]".contains(c)) => return None,
            None => {}
        }
    }
    quote.is_none().then(|| format!("{prefix}exec {body}"))
}

/// `command` run by a bash of its own, as `bash -c` (nixpkgs' framing), when
/// it names `$$`: that is the pid of the shell that runs the command, and
/// in a subshell of the backdoor shell it would be the backdoor shell's
/// (`kill $$` would kill it). `exec` where the guest's subshell may become
/// the program (see [`exec_form`]).
pub fn own_shell_form(command: &str, exec: bool) -> Option<String> {
    (command.contains("$$") || command.contains("${$}")).then(|| {
        format!(
            "{}\"$BASH\" -c {}",
            if exec { "exec " } else { "" },
            shell_quote(command)
        )
    })
}

/// A record for the guest's serve loop (`__vmt_records` in `guest-core.bash`):
/// the body's length as 6 hex digits and a space, then the kind and the
/// body. A record is all ASCII, so that the loop's `read -N` (which counts
/// characters) reads exactly it in any locale: an `e` line with other
/// bytes goes as `eval $'…'` with those bytes escaped.
pub(super) fn record(kind: char, body: &str) -> Result<Vec<u8>, ShellError> {
    // bash drops NUL bytes from what it reads, as nixpkgs' shell does from
    // its command line; `read -N` would not count them, and wait.
    let without_nul;
    let body = if body.contains('\0') {
        without_nul = body.replace('\0', "");
        &without_nul
    } else {
        body
    };
    let escaped;
    let body = if body.is_ascii() {
        body
    } else {
        debug_assert_eq!(kind, 'e', "only `e` records may carry non-ASCII");
        escaped = format!("eval {}", ascii_quote(body));
        &escaped
    };
    let len = body.len() + 1;
    if len > 0xff_ffff {
        return Err(ShellError::TooLong(len));
    }
    Ok(format!("{len:06x} {kind}{body}").into_bytes())
}

/// `s` as a bash `$'…'` string of ASCII characters only.
pub(super) fn ascii_quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 8);
    q.push_str("$'");
    for &b in s.as_bytes() {
        match b {
            b'\\' | b'\'' => {
                q.push('\\');
                q.push(b as char);
            }
            b' '..=b'~' => q.push(b as char),
            _ => q.push_str(&format!("\\x{b:02x}")),
        }
    }
    q.push('\'');
    q
}

/// A random word: a bootstrap's key, and what marks the end of an answer.
pub(super) fn nonce() -> String {
    format!("vmt{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// A shorter random word, for what the guest reads on the console a byte
/// at a time (the port bootstrap's line): 48 bits tell one boot's
/// bootstrap from whatever an earlier one left on the port.
pub(super) fn short_nonce() -> String {
    format!("b{:012x}", fastrand::u64(..1 << 48))
}

/// The last argument of a command line whose output is not kept (stdout
/// goes there instead of a fresh file).
pub(super) fn discard(capture: bool) -> &'static str {
    if capture {
        ""
    } else {
        " /dev/null"
    }
}

/// A timeout as `__vmt_exec` and `__vmt_until` take it: milliseconds, or
/// `-` for none.
pub(super) fn timeout_arg(t: Option<Duration>) -> String {
    match t {
        Some(t) => t.as_millis().to_string(),
        None => "-".to_string(),
    }
}

impl Shell {
    /// Reads the answer marked `nonce` (`<key><n>`): the header, then the
    /// output, small in one piece or in chunks the host acknowledges, or
    /// from the shared directory.
    pub(super) async fn read_answer(&mut self, nonce: &str) -> Result<Outcome, ShellError> {
        // Anything before the header (nothing, normally) is skipped.
        self.read_until(format!("{nonce} ").as_bytes()).await?;
        let head = self.read_until(b"\n").await?;
        let head = String::from_utf8_lossy(&head).to_string();
        let bad = || ShellError::Protocol(head.clone());
        let mut parts = head.split(' ');
        let status = parts
            .next()
            .and_then(|s| s.parse::<i32>().ok())
            .ok_or_else(bad)?;
        let ending = match parts.next() {
            Some("done") => Ending::Done,
            Some("timeout") => Ending::Timeout,
            Some("cancel") => Ending::Cancel,
            _ => return Err(bad()),
        };
        let mut output = Vec::new();
        let delimiter = format!("\n{nonce} c\n");
        let with_output = parts.next();
        if with_output == Some("2") {
            // The output in one piece, not acknowledged: small, or any
            // size on the command port (QEMU throttles a port, it drops
            // nothing).
            output = self.read_until(delimiter.as_bytes()).await?;
        } else if with_output == Some("3") {
            output = self.take_shared_output(nonce).await?;
        } else if with_output == Some("1") {
            loop {
                let chunk = self.read_until(delimiter.as_bytes()).await?;
                let more = chunk.len() == CHUNK;
                output.extend_from_slice(&chunk);
                self.stream
                    .write_all(if more { b"more." } else { b"done." })
                    .await?;
                if !more {
                    break;
                }
            }
        }
        self.pending = None;
        Ok(Outcome {
            status,
            output,
            ending,
        })
    }

    /// The output the guest left in the shared directory for the answer
    /// marked `nonce` (form 3), removed once read.
    async fn take_shared_output(&mut self, nonce: &str) -> Result<Vec<u8>, ShellError> {
        let Some(dir) = &self.shared_out else {
            return Err(ShellError::Protocol(format!(
                "{nonce}: output in the shared directory, which this host has not"
            )));
        };
        let path = dir.join(nonce);
        let output = tokio::fs::read(&path).await;
        let _ = tokio::fs::remove_file(&path).await;
        self.shared_outputs += 1;
        output.map_err(|source| ShellError::SharedOutput { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::shell::tests::{bootstrapped_pair, next_line, unprintf, KEY};
    use crate::machine::shell::Request;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn records_drop_nul_bytes_as_bash_would() {
        assert_eq!(
            record('r', "1 echo a\0b").unwrap(),
            record('r', "1 echo ab").unwrap()
        );
        assert_eq!(
            record('e', "echo \u{e9}\0").unwrap(),
            record('e', "echo \u{e9}").unwrap()
        );
    }

    #[test]
    fn only_commands_with_a_lone_ampersand_may_background() {
        assert!(may_background("sleep 600 &"));
        assert!(may_background("(sleep 1; touch f) & echo x"));
        assert!(may_background("coproc sleep 600"));
        assert!(may_background("echo hi > >(sleep 600)"));
        assert!(may_background("diff <(ls a) <(ls b)"));
        assert!(!may_background("a && b 2>&1 >&2 &>/dev/null"));
        assert!(!may_background("true"));
    }

    #[test]
    fn quoting_survives_single_quotes_and_newlines() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(shell_quote("x\ny"), "'x\ny'");
    }

    #[test]
    fn records_are_ascii_with_their_length_in_front() {
        assert_eq!(record('r', "7 true").unwrap(), b"000007 r7 true");
        let r = record('e', "printf '%s' '\u{e9}'\n").unwrap();
        assert_eq!(
            r,
            &b"000027 eeval $'printf \\'%s\\' \\'\\xc3\\xa9\\'\\x0a'"[..]
        );
        assert_eq!(
            usize::from_str_radix(std::str::from_utf8(&r[..6]).unwrap(), 16).unwrap(),
            r.len() - 7
        );
        assert!(record('e', &"x".repeat(0xff_fffe)).is_ok());
        assert!(matches!(
            record('e', &"x".repeat(0xff_ffff)),
            Err(ShellError::TooLong(0x100_0000))
        ));
    }

    #[test]
    fn ascii_quoting_gives_back_every_byte_in_bash() {
        let text: String = (1..=0x7f_u8)
            .map(char::from)
            .chain("h\u{e9} \u{20ac} \u{1f600}".chars())
            .collect();
        let q = ascii_quote(&text);
        assert!(q.is_ascii());
        let out = std::process::Command::new("bash")
            .args(["-c", "eval \"v=$1\"; printf %s \"$v\"", "_", &q])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    }

    #[test]
    fn a_command_naming_its_shells_pid_gets_a_bash_of_its_own() {
        assert_eq!(
            own_shell_form("set -euo pipefail; kill $$", true).as_deref(),
            Some(r#"exec "$BASH" -c 'set -euo pipefail; kill $$'"#)
        );
        assert_eq!(
            own_shell_form("echo ${$}", false).as_deref(),
            Some(r#""$BASH" -c 'echo ${$}'"#)
        );
        assert_eq!(own_shell_form("echo $BASHPID $1", true), None);
    }

    #[test]
    fn only_plain_simple_commands_of_programs_are_execed() {
        let names: HashSet<String> = ["true", "echo", "[", "if", "exec", "__vmt_exec", "ll"]
            .map(String::from)
            .into();
        let exec = |c: &str| exec_form(c, &names);
        assert_eq!(
            exec("set -euo pipefail; systemctl is-active nginx").as_deref(),
            Some("set -euo pipefail; exec systemctl is-active nginx")
        );
        assert_eq!(
            exec("  grep -q 'a b; $x | y' /etc/x*.conf ~/f:1,2 ").as_deref(),
            Some("exec grep -q 'a b; $x | y' /etc/x*.conf ~/f:1,2")
        );
        assert_eq!(
            exec(r#"grep -c "a 'b'; c | d" x"#).as_deref(),
            Some(r#"exec grep -c "a 'b'; c | d" x"#)
        );
        assert_eq!(
            exec("/run/current-system/sw/bin/curl -f http://[::1]:80/a?b=c%20d").as_deref(),
            Some("exec /run/current-system/sw/bin/curl -f http://[::1]:80/a?b=c%20d")
        );
        for kept in [
            "",
            "set -euo pipefail; ",
            "true",
            "set -euo pipefail; echo hi",
            "[ -e /x ]",
            "if true; then ls; fi",
            "ll /",
            "FOO=1 env",
            "-x a",
            "ls; ls",
            "ls && ls",
            "ls || ls",
            "ls | wc",
            "sleep 1 &",
            "ls >/tmp/x",
            "ls 2>&1",
            "ls $HOME",
            "ls \"$HOME\"",
            "ls `pwd`",
            "ls $(pwd)",
            "ls \\n",
            "ls \"$HOME/x\"",
            "ls \"a\\\"b\"",
            "ls \"`pwd`\"",
            "ls \"unterminated",
            "ls 'unterminated",
            "ls\nrm x",
            "ls # comment",
            "ls {a,b}",
            "l*s",
            "cat /etc/ø",
        ] {
            assert_eq!(exec(kept), None, "{kept:?}");
        }
    }

    #[test]
    fn printf_formats_give_back_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let f = printf_format(&all);
        assert!(
            !f.contains('%') && !f.contains('\''),
            "nothing printf or the quoting would read: {f}"
        );
        assert_eq!(unprintf(&f), all);
    }

    /// A fake guest: answers one framed command the way the bootstrap does,
    /// with two chunks of output and noise before the answer.
    #[tokio::test]
    async fn framing_is_exact_for_binary_output_in_chunks() {
        let (mut shell, mut guest) = bootstrapped_pair();
        let payload: Vec<u8> = (0..CHUNK + 10).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let line = next_line(&mut reader).await;
            assert!(line.starts_with("__vmt_exec "), "{line}");
            let n = format!("{KEY}{}", line.split_whitespace().nth(1).unwrap());
            let mut acks = Vec::new();
            let mut answer = format!("noise before\n{n} 3 done 1\n").into_bytes();
            for chunk in payload.chunks(CHUNK) {
                answer.extend_from_slice(chunk);
                answer.extend_from_slice(format!("\n{n} c\n").as_bytes());
                reader.get_mut().write_all(&answer).await.unwrap();
                answer.clear();
                let mut ack = Vec::new();
                tokio::io::AsyncBufReadExt::read_until(&mut reader, b'.', &mut ack)
                    .await
                    .unwrap();
                acks.push(String::from_utf8(ack).unwrap());
            }
            acks
        });
        let out = run_x(&mut shell).await;
        assert_eq!(fake.await.unwrap(), vec!["more.", "done."]);
        assert_eq!(out.status, 3);
        assert_eq!(out.output, expected);
        assert_eq!(out.ending, Ending::Done);
    }

    /// Small output comes with the answer and is not acknowledged: the next
    /// thing the host sends is the next command.
    #[tokio::test]
    async fn small_output_comes_with_the_answer_unacknowledged() {
        let (mut shell, mut guest) = bootstrapped_pair();
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let mut lines = Vec::new();
            for _ in 0..2 {
                let line = next_line(&mut reader).await;
                let n = format!("{KEY}{}", line.split_whitespace().nth(1).unwrap());
                let mut answer = format!("{n} 0 done 2\n").into_bytes();
                answer.extend_from_slice(b"it's\n\0\xff");
                answer.extend_from_slice(format!("\n{n} c\n").as_bytes());
                reader.get_mut().write_all(&answer).await.unwrap();
                lines.push(line);
            }
            lines
        });
        for _ in 0..2 {
            let out = run_x(&mut shell).await;
            assert_eq!(out.output, b"it's\n\0\xff");
            assert_eq!((out.status, out.ending), (0, Ending::Done));
        }
        let lines = fake.await.unwrap();
        assert!(
            lines.iter().all(|l| l.starts_with("__vmt_exec ")),
            "{lines:?}"
        );
    }

    /// Output left in the shared directory (form 3) is read from there,
    /// exactly, and removed; without a shared directory on the host's
    /// side that answer is an error, not an empty output.
    #[tokio::test]
    async fn output_in_the_shared_directory_is_read_and_removed() {
        let (mut shell, mut guest) = bootstrapped_pair();
        let shared = tempfile::tempdir().unwrap();
        shell.set_shared_dir(shared.path());
        let dir = shared.path().join(crate::machine::shell::SHARED_OUT);
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
        let expected = payload.clone();
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let line = next_line(&mut reader).await;
            let n = format!("{KEY}{}", line.split_whitespace().nth(1).unwrap());
            std::fs::write(dir.join(&n), &payload).unwrap();
            let answer = format!("{n} 0 done 3\n");
            reader.get_mut().write_all(answer.as_bytes()).await.unwrap();
            guest
        });
        let out = run_x(&mut shell).await;
        assert_eq!(out.output, expected);
        assert_eq!(shell.shared_outputs(), 1);
        let dir = shared.path().join(crate::machine::shell::SHARED_OUT);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);

        // A host without the directory.
        let mut guest = fake.await.unwrap();
        shell.shared_out = None;
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let line = next_line(&mut reader).await;
            let n = format!("{KEY}{}", line.split_whitespace().nth(1).unwrap());
            let answer = format!("{n} 0 done 3\n");
            reader.get_mut().write_all(answer.as_bytes()).await.unwrap();
            guest
        });
        let req = Request::Exec {
            command: "x",
            timeout: None,
            capture: true,
        };
        assert!(matches!(shell.run(req).await, Err(ShellError::Protocol(_))));
        drop(fake.await.unwrap());
    }

    /// A call cut short after the guest left its output in the shared
    /// directory: the next call, which settles it, removes the file.
    #[tokio::test]
    async fn a_cancelled_calls_output_in_the_shared_directory_is_removed() {
        let (mut shell, mut guest) = bootstrapped_pair();
        let shared = tempfile::tempdir().unwrap();
        shell.set_shared_dir(shared.path());
        let dir = shared.path().join(crate::machine::shell::SHARED_OUT);
        let left = dir.clone();
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let line = next_line(&mut reader).await;
            let n = format!("{KEY}{}", line.split_whitespace().nth(1).unwrap());
            // Its output, and no answer before the host gives up.
            std::fs::write(left.join(&n), b"never read").unwrap();
            assert_eq!(next_line(&mut reader).await, "cancel.\n");
            let sync = next_line(&mut reader).await;
            let word = sync.split_whitespace().nth(2).unwrap().to_string();
            reader
                .get_mut()
                .write_all(format!("{word}\n").as_bytes())
                .await
                .unwrap();
            let line = next_line(&mut reader).await;
            let n = format!("{KEY}{}", line.split_whitespace().nth(1).unwrap());
            let answer = format!("{n} 0 done 0\n");
            reader.get_mut().write_all(answer.as_bytes()).await.unwrap();
        });
        let req = Request::Exec {
            command: "x",
            timeout: None,
            capture: true,
        };
        let cut = tokio::time::timeout(Duration::from_millis(500), shell.run(req));
        assert!(cut.await.is_err(), "the first call was not cut short");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let out = run_x(&mut shell).await;
        assert_eq!((out.status, out.output.len()), (0, 0));
        fake.await.unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    /// Runs the command `x`, keeping its output.
    async fn run_x(shell: &mut Shell) -> Outcome {
        let req = Request::Exec {
            command: "x",
            timeout: None,
            capture: true,
        };
        shell.run(req).await.unwrap()
    }
}
