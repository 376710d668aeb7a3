//! The guest's side of the protocol: the bash functions the driver defines
//! in the backdoor shell (`guest-core.bash`, `guest-rest.bash`), and the
//! lines that send them and set the shell up. Tested here in the host's
//! bash, without a VM.

use std::sync::LazyLock;

use super::{CHUNK, GUEST_SHARED, SHARED_OUT};
use crate::machine::qemu::{CMD_NR, CMD_PORT, CTL_NR, CTL_PORT};

/// Fills in the constants the bash shares with the Rust (`@NAME@`).
fn fill(source: &str) -> String {
    source
        .replace("@CHUNK@", &CHUNK.to_string())
        .replace("@SHARED_OUT@", &format!("{GUEST_SHARED}/{SHARED_OUT}"))
        .replace("@CMD_PORT@", CMD_PORT)
        .replace("@CTL_PORT@", CTL_PORT)
}

/// The control port's functions in the shell (`guest-stop.bash`): the
/// first command's console line gets them only if the host stops it
/// ([`stop_line`]); every bootstrap defines them.
pub(super) static BOOTSTRAP_STOP: LazyLock<String> =
    LazyLock::new(|| fill(include_str!("guest-stop.bash")));

/// The shell's setup and what every command needs (`guest-first.bash`):
/// the port bootstrap's first record.
pub(super) static BOOTSTRAP_FIRST: LazyLock<String> =
    LazyLock::new(|| fill(include_str!("guest-first.bash")));

/// The serve loop and the rest of what every command needs
/// (`guest-core.bash`): the port bootstrap's second record.
pub(super) static BOOTSTRAP: LazyLock<String> =
    LazyLock::new(|| fill(include_str!("guest-core.bash")));

/// The rest of the guest's functions (`guest-rest.bash`): defined after
/// the next plain command's answer once the port bootstrap is done, or
/// before any other request (see [`super::Rest`]).
pub(super) static BOOTSTRAP_REST: LazyLock<String> =
    LazyLock::new(|| fill(include_str!("guest-rest.bash")));

/// Bash source as the console carries it: without comment lines and
/// indentation (bash reads a console a byte at a time; the bootstrap is
/// half as long this way).
pub(super) fn compact(source: &str) -> String {
    source
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bootstrap as it goes on the console: `PS2=` first, since a shell
/// that reads the console interactively would otherwise prompt for every
/// continuation line; then all the functions, [`init_and_report`] and
/// [`names_report`].
pub(super) fn console_bootstrap(n: &str, key: &str) -> String {
    format!(
        "PS2=; unset __d __c __p __h __r __l __m\n{}\n{}\n{}\n{}\n{}\n{}\n",
        compact(&BOOTSTRAP_STOP),
        compact(&BOOTSTRAP_FIRST),
        compact(&BOOTSTRAP),
        compact(&BOOTSTRAP_REST),
        init_and_report(n, key),
        names_report(n, true)
    )
}

/// The bash that runs `__vmt_init` and starts the control listener, then
/// reports `<n> ok[ ctl][ cmd]`, or `<n> failed` (the console bootstrap).
fn init_and_report(n: &str, key: &str) -> String {
    format!(
        "if __vmt_init {key} && __vmt_ctl_start; then \
         printf '%s ok%s%s\\n' {n} \"${{__vmt_listener:+ ctl}}\" \"${{__vmt_cmdport:+ cmd}}\"; \
         else printf '%s failed\\n' {n}; fi"
    )
}

/// The bash that prints `<n> names`, the names bash resolves itself
/// (builtins, keywords, functions, aliases; `#` if it cannot list them),
/// which [`super::exec_form`] must not exec, then `<n> end`. On the
/// `console`, the names go in one write (bash's stdout is line-buffered: a
/// write a name, and there each one spins in the guest until QEMU took it).
fn names_report(n: &str, console: bool) -> String {
    let names = if console {
        "__vmt_h=; { compgen -b -k -A function -a >\"${__vmt_at}names\" && \
         IFS= read -r -d '' __vmt_h <\"${__vmt_at}names\"; printf '%s' \"${__vmt_h:-#}\"; } 2>/dev/null"
    } else {
        "{ compgen -b -k -A function -a || echo '#'; } 2>/dev/null"
    };
    format!("printf '%s names\\n' {n}; {names}; printf '\\n%s end\\n' {n}")
}

/// [`BOOTSTRAP_REST`] and the [`names_report`], as one line of bash for
/// the console or (not `console`) a record of the serve loop.
pub(super) fn rest_line(n: &str, console: bool) -> String {
    format!(
        "{}\n{}\n",
        compact(&BOOTSTRAP_REST),
        names_report(n, console)
    )
}

/// The port bootstrap's first record body: the functions of
/// [`BOOTSTRAP_STOP`] and [`BOOTSTRAP_FIRST`] and `__vmt_init`; then the
/// report, `<n> ok ctl cmd` and `<n> serving` in one write where the host
/// has the control port (`host_ctl`) and the guest both ports, else `<n>
/// failed` or nothing yet. Then it reads and evaluates the record after it
/// ([`port_record_core`]). The functions of [`BOOTSTRAP`] come in that
/// second record: bash's `read` moves a record into its variable a
/// character at a time (1–2 ms a kilobyte under TCG right after a boot,
/// docs/performance.md), and the report need not wait for them.
pub(super) fn port_record_body(n: &str, key: &str, host_ctl: bool) -> String {
    let host_ctl = u8::from(host_ctl);
    format!(
        "{}\n{}\n__vmt_sync={n} __vmt_left=; set --\n\
         PS2= __vmt_cmdport=$__d __vmt_ctlport=${{__d%p{CMD_NR}}}p{CTL_NR}; [[ -c $__vmt_ctlport ]] || __vmt_ctlport=; unset __d __h __p __r __l __m\n\
         __vmt_go=''\n\
         if ! __vmt_init {key}; then printf '%s failed\\n' {n}; \
         elif [[ {host_ctl} == 1 && -n $__vmt_ctlport && -n $__vmt_cmdport ]]; then __vmt_go=1; \
         printf '%s ok ctl cmd\\n%s serving\\n' {n} {n}; else __vmt_go=0; fi\n\
         {{ read -r -N 7 __vmt_h && read -r -N $((16#$__vmt_h)) __vmt_h; }} 2>/dev/null && eval \"$__vmt_h\"\n",
        compact(&BOOTSTRAP_STOP),
        compact(&BOOTSTRAP_FIRST),
    )
}

/// The port bootstrap's second record body: the functions of
/// [`BOOTSTRAP`]; then, after a first command from the console
/// ([`first_line`]), its output file left for the next; then, if the loop
/// serves, the serve loop itself (`__vmt_records`, which starts the
/// control listener and reads on); else the control listener, the report
/// and `<n> idle`.
pub(super) fn port_record_core(n: &str) -> String {
    format!(
        "{}\n\
         if [[ -n $__vmt_ran ]]; then __vmt_next; __vmt_ran=; fi; \
         if [[ $__vmt_go == 1 ]]; then __vmt_records 2>/dev/null; \
         elif [[ $__vmt_go == 0 ]]; then __vmt_ctl_start; __vmt_sync=; \
         printf '%s ok%s%s\\n%s idle\\n' {n} \"${{__vmt_ctlport:+ ctl}}\" \"${{__vmt_cmdport:+ cmd}}\" {n}; fi\n",
        compact(&BOOTSTRAP),
    )
}

/// The first command after a boot (its id, its text as sent, whether its
/// output is kept), as one line on the console that runs it and answers
/// it there, before anything of the driver's is defined in the shell:
/// under TCG, what a boot runs for the first time costs several times what
/// it costs later, and a first command that waited for the port bootstrap
/// cost about 20 ms more than nixpkgs' (docs/performance.md). The output
/// goes to the file the bootstrap's `__vmt_init` will call `o.0` (in the
/// first of /run, /dev/shm, /tmp bash may write in). The line answers as
/// the serve loop does (`mark` is the bootstrap's key and the id), with
/// `<mark>+` if the output is not small (the host asks for it once the
/// shell is set up: `__vmt_send_output`), or `<mark>-` if no directory is
/// writable (nothing ran). While the command runs, the line looks at the
/// console every 0.1 s: a [`stop_line`] there is how the host stops it.
/// A detached subshell of the command keeps the pipe the line waits on
/// (bash's saved copy of the function's stdout): the command's end is then
/// seen at the next 0.1 s, by its pid.
/// The command runs in a function, as the serve loop's do (`return`
/// ends it). The mark is never followed by a space in the line itself, so
/// a console that echoed it would not answer for it.
pub(super) fn first_line(mark: &str, id: u64, command: &str, capture: bool) -> String {
    let to = if capture {
        "$__vmt_d/.nix-vmtest-$$.o.0"
    } else {
        "/dev/null"
    };
    let command = super::shell_quote(command);
    format!(
        "BASH_ARGV0=bash __m={mark} __vmt_id={id} __vmt_why= __vmt_ran=1 __vmt_spent=;\
         for __vmt_d in /run /dev/shm /tmp '';do [[ -d $__vmt_d&&-w $__vmt_d ]]&&break;done;\
         if [[ -n $__vmt_d ]];then __vmt_to={to} __vmt_cmd={command};__vmt_first(){{ eval \"$__vmt_cmd\";}};\
         exec {{__r}}< <(__vmt_first </dev/null >$__vmt_to);__p=$!;\
         until read -t.1 -u$__r;(($?<129));do kill -0 $__p 2>/dev/null||break;read -t0&&read -r __l&&eval \"$__l\";done;\
         exec {{__r}}<&-;wait $__p 2>/dev/null;__vmt_st=$?;\
         if [[ ! -s $__vmt_to ]];then echo $__m $__vmt_st done 0;\
         elif IFS= read -rd '' -n4097 __l <$__vmt_to;then echo $__m+;\
         else __vmt_spent=1;printf '%s %s done 2\\n%s\\n%s c\\n' $__m $__vmt_st \"$__l\" $__m;fi;\
         else echo $__m-;fi\n"
    )
}

/// What stops the first command's line ([`first_line`]): the functions of
/// [`BOOTSTRAP_STOP`], the control port's device and `__vmt_stop`, which
/// answers the one request the host sends on the port after this line.
/// Read by that command's wait within 0.1 s, or, if the command ended
/// meanwhile, by the shell after it (the request is answered all the
/// same, and nothing is killed).
pub(super) fn stop_line() -> String {
    // One line, for the wait's `read -r`: the bash in a `$'…'` string.
    let bash = format!(
        "{}\n__vmt_pidfile=$__vmt_d/.nix-vmtest-ctl.pid __h=(/sys/class/virtio-ports/vport*p{CTL_NR})\n\
         __vmt_ctlport=/dev/${{__h##*/}}; [[ -c $__vmt_ctlport ]] || __vmt_ctlport=; __vmt_stop 2>/dev/null",
        compact(&BOOTSTRAP_STOP)
    );
    format!("eval {}\n", super::framing::ascii_quote(&bash))
}

/// The port bootstrap's line on the console: finds both ports (what
/// `__vmt_ports` does, so `__vmt_init` need not look again), skips what
/// the command port holds up to `<n>.` and evaluates the record after it
/// ([`port_record_body`]); then `__vmt_served` reports the loop's end, or
/// `<n> noport` if there was no port (or no record).
pub(super) fn port_console_line(n: &str) -> String {
    // Short, since bash reads the console a byte at a time (3–12 µs each
    // under TCG, the most right after a boot; what bash runs here for the
    // first time costs more): short names, which the record unsets, and
    // `__vmt_served` or, undefined (no port, no record), `<n> noport`.
    format!(
        "__d=(/sys/class/virtio-ports/vport*p{CMD_NR});__d=/dev/${{__d##*/}};\
         [[ -c $__d ]]&&{{ while read -rd. __h&&[[ $__h != *{n} ]];do :;done;\
         read -rN7 __h&&read -rN$((16#$__h)) __h&&eval \"$__h\";}} <>$__d >&0;\
         __vmt_served $? 2>/dev/null||echo {n} noport\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::shell::Shell;
    use std::path::Path;
    use tokio::net::UnixStream;

    /// The console bootstrap in the host's bash, read interactively from a
    /// pty (as a guest whose backdoor shell were interactive would read
    /// it): no continuation prompts, no job notice for the listener.
    #[test]
    fn an_interactive_shell_takes_the_bootstrap_quietly() {
        let dir = std::env::temp_dir().join(format!("vmt-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ctl = dir.join("ctl");
        assert!(std::process::Command::new("mkfifo")
            .arg(&ctl)
            .status()
            .unwrap()
            .success());
        // The guest's ports are a FIFO here (the listener opens it `<>`),
        // set as the port bootstrap's first line sets them. The shell's
        // files go at the end (`__vmt_init` made them in the host's /run or
        // /dev/shm).
        let input = format!(
            "PS1=\n__vmt_cmdport= __vmt_ctlport={}\n{}rm -f \"$__vmt_at\"*; \
             kill \"$__vmt_listener\"; exit\n",
            ctl.display(),
            console_bootstrap("N", "K-")
        );
        let file = dir.join("input");
        std::fs::write(&file, input).unwrap();
        let out = std::process::Command::new("script")
            .args(["-q", "-e", "-c", "bash --norc -i", "/dev/null"])
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .expect("script(1) from util-linux");
        let _ = std::fs::remove_dir_all(&dir);
        // Without the pty's carriage returns and bracketed-paste switches.
        let text = String::from_utf8_lossy(&out.stdout)
            .replace('\r', "")
            .replace("\x1b[?2004h", "")
            .replace("\x1b[?2004l", "");
        assert!(text.contains("N ok ctl"), "{text}");
        assert!(text.contains("__vmt_init"), "the names: {text}");
        assert!(
            !text.lines().any(|l| l.starts_with("[1]")),
            "a job notice: {text}"
        );
        let prompts = text.lines().filter(|l| l.starts_with("> ")).count();
        assert_eq!(prompts, 0, "continuation prompts: {text}");
    }

    #[test]
    fn the_compact_bootstrap_is_ascii_bash_that_parses() {
        let defs = format!(
            "{}\n{}\n{}\n{}",
            compact(&BOOTSTRAP_STOP),
            compact(&BOOTSTRAP_FIRST),
            compact(&BOOTSTRAP),
            compact(&BOOTSTRAP_REST)
        );
        assert!(defs.is_ascii(), "a record carries ASCII only");
        let whole =
            BOOTSTRAP_STOP.len() + BOOTSTRAP_FIRST.len() + BOOTSTRAP.len() + BOOTSTRAP_REST.len();
        assert!(defs.len() < whole * 2 / 3, "{} bytes", defs.len());
        assert!(!defs.lines().any(|l| l.starts_with('#') || l.is_empty()));
        assert_parses(&defs);
        // Every function survives.
        for f in [
            "__vmt_init",
            "__vmt_loop",
            "__vmt_serve",
            "__vmt_until",
            "__vmt_bus_stop",
        ] {
            assert!(format!("\n{defs}").contains(&format!("\n{f}() {{")), "{f}");
        }
    }

    /// The port bootstrap's console line stays short (bash reads it a byte
    /// at a time), and it and both records parse; the first record holds
    /// none of the serve loop's functions (they come after the report).
    /// The first command's line and the line that stops it parse too, and
    /// the stop line is one line.
    #[test]
    fn the_console_lines_are_short_and_parse() {
        let n = super::super::framing::short_nonce();
        let line = port_console_line(&n);
        assert!(line.len() < 270, "{} bytes: {line}", line.len());
        let first = port_record_body(&n, "k-", true);
        let core = port_record_core(&n);
        assert!(!first.contains("__vmt_records()") && core.contains("__vmt_records()"));
        assert!(first.contains("__vmt_stop()") && first.contains("__vmt_init()"));
        let command = "set -euo pipefail; echo 'it''s' \"$HOME\"\ncat <<EOF\nx\nEOF";
        let first_line = first_line("k-7", 7, command, true);
        assert!(first_line.len() < 800 + command.len(), "{first_line}");
        let stop = stop_line();
        assert_eq!(stop.lines().count(), 1, "{stop}");
        for text in [&line, &first, &core, &first_line, &stop] {
            assert_parses(text);
        }
    }

    /// The first command's line in the host's bash: each form of its
    /// answer, `set -e`, `$0`, output not kept, and the state the
    /// bootstrap after it takes up (the output file it names `o.0`).
    #[test]
    fn the_first_line_answers_in_the_hosts_bash() {
        let run = |command: &str, capture: bool| -> (String, String) {
            let script = format!(
                "{}echo \"state $__vmt_id $__vmt_st $__vmt_ran ${{__vmt_spent:-0}} \
                 ${{__vmt_to##*/}}\"; [[ $__vmt_to == */.nix-vmtest-* ]] && rm -f \"$__vmt_to\"\n",
                first_line("K-5", 5, command, capture)
            );
            let out = std::process::Command::new("bash")
                .args(["--norc", "-c", &script])
                .output()
                .expect("bash");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let (answer, state) = text.rsplit_once("state ").expect(&text);
            (answer.to_string(), state.trim().to_string())
        };
        let (answer, state) = run("true", true);
        assert_eq!(answer, "K-5 0 done 0\n");
        assert!(state.starts_with("5 0 1 0 .nix-vmtest-"), "{state}");
        assert!(state.ends_with(".o.0"), "{state}");
        let (answer, state) = run("set -euo pipefail; echo \"$0\"; false; echo after", true);
        assert_eq!(answer, "K-5 1 done 2\nbash\n\nK-5 c\n");
        assert!(state.starts_with("5 1 1 1 "), "{state}");
        let (answer, state) = run("echo gone; exit 3", false);
        assert_eq!(answer, "K-5 3 done 0\n");
        assert_eq!(state, "5 3 1 0 null");
        // As on the serve loop: `return` ends the command, and the
        // command has no positional parameters.
        let (answer, _) = run("echo \"$#\"; return 4", true);
        assert_eq!(answer, "K-5 4 done 2\n0\n\nK-5 c\n");
        // A detached subshell keeps the pipe the line waits on: the
        // command's end is seen by its pid (it lives 5 s here).
        let t = std::time::Instant::now();
        let (answer, _) = run("(sleep 5; :) >/dev/null 2>&1 & echo started", true);
        assert_eq!(answer, "K-5 0 done 2\nstarted\n\nK-5 c\n");
        assert!(t.elapsed().as_secs() < 4, "{:?}", t.elapsed());
        // A NUL byte, or more than 4096 characters: the output waits.
        for big in ["printf 'a\\0b'", "head -c 5000 /dev/zero | tr '\\0' x"] {
            let (answer, state) = run(big, true);
            assert_eq!(answer, "K-5+\n", "{big}");
            assert!(state.starts_with("5 0 1 0 "), "{big}: {state}");
        }
    }

    /// Fails unless the host's bash parses `text` (`bash -n`).
    fn assert_parses(text: &str) {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", text])
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_shared_constants_are_filled_in() {
        for placeholder in ["@CHUNK@", "@CMD_PORT@", "@CTL_PORT@", "@SHARED_OUT@"] {
            assert!(!BOOTSTRAP_STOP.contains(placeholder), "{placeholder}");
            assert!(!BOOTSTRAP_FIRST.contains(placeholder), "{placeholder}");
            assert!(!BOOTSTRAP.contains(placeholder), "{placeholder}");
            assert!(!BOOTSTRAP_REST.contains(placeholder), "{placeholder}");
        }
        assert!(BOOTSTRAP.contains(&format!(" bs={CHUNK} ")));
        assert!(BOOTSTRAP.contains(&format!("[[ -d {GUEST_SHARED}/{SHARED_OUT} ]]")));
        assert!(BOOTSTRAP_REST.contains(&format!("{CMD_PORT}) ")));
        assert!(BOOTSTRAP_REST.contains(&format!("{CTL_PORT}) ")));
    }

    /// shellcheck on the guest's bash as it is written (its directives say
    /// what is disabled where, and why).
    #[test]
    fn shellcheck_finds_nothing_in_the_guest_bash() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/machine/shell");
        let out = match std::process::Command::new("shellcheck")
            .args([
                "--norc",
                "guest-stop.bash",
                "guest-first.bash",
                "guest-core.bash",
                "guest-rest.bash",
            ])
            .current_dir(dir)
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "shellcheck is not installed; it checks the guest's bash: install it \
                 (Debian: apt-get install -y shellcheck)"
            ),
            Err(e) => panic!("cannot run shellcheck: {e}"),
        };
        assert!(
            out.status.success(),
            "shellcheck on {dir}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The host's `bash --norc` as a guest's backdoor shell without the
    /// driver's ports: stdin and stdout one end of a socketpair, stderr
    /// captured. Killed, and its files removed, when dropped.
    struct HostBash {
        child: std::process::Child,
    }

    impl HostBash {
        fn start() -> (HostBash, Shell) {
            use std::process::{Command, Stdio};
            let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
            let child = Command::new("bash")
                .arg("--norc")
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(
                    guest.try_clone().unwrap(),
                )))
                .stdout(Stdio::from(std::os::fd::OwnedFd::from(guest)))
                .stderr(Stdio::piped())
                .spawn()
                .expect("bash");
            host.set_nonblocking(true).unwrap();
            let shell = Shell::new(UnixStream::from_std(host).unwrap());
            (HostBash { child }, shell)
        }

        /// What bash wrote on stderr, once it has exited (its input closed).
        fn stderr(mut self) -> String {
            use std::io::Read;
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                e.read_to_string(&mut err).unwrap();
            }
            err
        }
    }

    impl Drop for HostBash {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            // `__vmt_init`'s files: `<dir>/.nix-vmtest-<bash's pid>.*`,
            // and the control listener's pid file where the pid in it is
            // gone (the listener of this bash, or of an earlier one).
            let prefix = format!(".nix-vmtest-{}.", self.child.id());
            for dir in ["/run", "/dev/shm", "/tmp"] {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
                let pidfile = Path::new(dir).join(".nix-vmtest-ctl.pid");
                if let Ok(pid) = std::fs::read_to_string(&pidfile) {
                    if !Path::new("/proc").join(pid.trim()).exists() {
                        let _ = std::fs::remove_file(&pidfile);
                    }
                }
            }
        }
    }

    /// The console path end to end in the host's bash, no VM: bootstrap,
    /// exact output and status, `set -e`, chunked output, a wait, a
    /// timeout the guest's own watcher enforces (there is no control
    /// port), a command naming `$$`, and the names the exec form avoids.
    #[tokio::test]
    async fn the_console_protocol_runs_in_the_hosts_bash() {
        use super::super::{exec_form, Ending, Outcome, Request, UntilMode};
        use crate::machine::user_command;
        use std::time::{Duration, Instant};

        async fn exec(shell: &mut Shell, command: &str, timeout: Option<Duration>) -> Outcome {
            let req = Request::Exec {
                command,
                timeout,
                capture: true,
            };
            shell.run(req).await.expect(command)
        }
        let (bash, mut shell) = HostBash::start();
        let dir = tempfile::tempdir().unwrap();
        let body = async {
            let o = exec(&mut shell, &user_command("echo hi; echo there"), None).await;
            assert_eq!((o.status, o.ending), (0, Ending::Done));
            assert_eq!(o.output, b"hi\nthere\n");
            assert!(shell.boot.as_ref().is_some_and(|b| !b.ctl && !b.cmd));

            // `set -e` holds: the command ends at its first failure.
            let o = exec(&mut shell, &user_command("false; echo after"), None).await;
            assert_eq!((o.status, o.output.as_slice()), (1, &b""[..]));
            let o = exec(&mut shell, &user_command("echo x | false | true"), None).await;
            assert_eq!((o.status, o.output.as_slice()), (1, &b""[..]));
            let o = exec(&mut shell, "printf 'a\\0b\\n\\377'; exit 3", None).await;
            assert_eq!((o.status, o.output.as_slice()), (3, &b"a\0b\n\xff"[..]));
            // Output is not kept.
            let req = Request::Exec {
                command: "echo gone; exit 4",
                timeout: None,
                capture: false,
            };
            let o = shell.run(req).await.unwrap();
            assert_eq!((o.status, o.output.as_slice()), (4, &b""[..]));
            // Two chunks, each acknowledged.
            let big = CHUNK + 1000;
            let o = exec(
                &mut shell,
                &format!("head -c {big} /dev/zero | tr '\\0' x"),
                None,
            )
            .await;
            assert_eq!(o.output, vec![b'x'; big]);
            // The command sees no positional parameters and `$0` as under
            // `bash -c`.
            let o = exec(&mut shell, "echo \"$# $0\"", None).await;
            assert_eq!(o.output, b"0 bash\n");

            // A wait loops in the guest until the command succeeds.
            let f = dir.path().join("tries");
            let f = f.display();
            let req = Request::Until {
                command: &format!("echo . >>{f}; [ $(wc -l <{f}) -ge 3 ]"),
                timeout: Some(Duration::from_secs(20)),
                mode: UntilMode::Succeed,
            };
            let o = shell.run(req).await.unwrap();
            assert_eq!((o.status, o.ending), (0, Ending::Done));
            assert_eq!(
                std::fs::read_to_string(dir.path().join("tries")).unwrap(),
                ".\n.\n.\n"
            );

            // The guest's loop ends a wait on the statuses `UntilMode::ends`
            // names (the rule a wait run one try at a time uses).
            for mode in [UntilMode::Succeed, UntilMode::Fail, UntilMode::Settled] {
                for status in [0, 1, 2] {
                    let command = format!("exit {status}");
                    let req = Request::Until {
                        command: &command,
                        timeout: Some(Duration::from_millis(300)),
                        mode,
                    };
                    let o = shell.run(req).await.unwrap();
                    let ended = o.ending != Ending::Timeout;
                    assert_eq!(ended, mode.ends(status), "{mode:?} {status}: {o:?}");
                }
            }

            // Without a control port, the guest's watcher ends a command at
            // its deadline.
            let started = Instant::now();
            let o = exec(
                &mut shell,
                "sleep 30; echo late",
                Some(Duration::from_millis(300)),
            )
            .await;
            assert_eq!(o.ending, Ending::Timeout);
            assert_eq!(o.output, b"");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
            let o = exec(&mut shell, "echo next", None).await;
            assert_eq!((o.status, o.output.as_slice()), (0, &b"next\n"[..]));

            // `$$` is the command's own bash: `kill $$` ends the command,
            // not the shell.
            let o = exec(&mut shell, &user_command("kill $$; echo not"), None).await;
            assert_eq!((o.status, o.output.as_slice()), (143, &b""[..]));
            let o = exec(&mut shell, "echo alive", None).await;
            assert_eq!(o.output, b"alive\n");

            // The names bash resolves itself, as the bootstrap listed them:
            // a command of a program is execed, and runs as it would.
            let names = shell
                .boot
                .as_ref()
                .and_then(|b| b.names.clone())
                .expect("names");
            for name in ["__vmt_exec", "__vmt_until", "echo", "if", "exec"] {
                assert!(names.contains(name), "{name}: {names:?}");
            }
            assert!(!names.contains("ls"));
            let ls = exec_form(&user_command("ls /nonexistent-vmt"), &names).expect("exec form");
            assert_eq!(ls, "set -euo pipefail; exec ls /nonexistent-vmt");
            assert_eq!(exec(&mut shell, &ls, None).await.status, 2);
            let missing = exec_form("vmt-no-such-program", &names).expect("exec form");
            assert_eq!(exec(&mut shell, &missing, None).await.status, 127);
            assert_eq!(exec_form(&user_command("echo hi"), &names), None);
        };
        tokio::time::timeout(Duration::from_secs(120), body)
            .await
            .expect("the host's bash answered in time");
        // bash exits when its input closes.
        drop(shell);
        let err = bash.stderr();
        let unexpected: Vec<&str> = err
            .lines()
            .filter(|l| {
                !["/nonexistent-vmt", "vmt-no-such-program", "Terminated"]
                    .iter()
                    .any(|s| l.contains(s))
            })
            .collect();
        assert!(unexpected.is_empty(), "bash's stderr: {err}");
        assert!(err.contains("vmt-no-such-program: not found"), "{err}");
    }
}
