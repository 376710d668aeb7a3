//! Commands through the guest's backdoor shell: connecting to it after a
//! boot, `execute`, the waits the guest loops on (`wait_until`,
//! `wait_for_unit`), unit queries, and the interactive shell.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::shell::{self, Ending, Outcome, Request, Shell, ShellError, UnitWait, UntilMode};
use super::{as_written, Machine, MachineError};

/// `systemctl <q>`, or as `user` through `su`, as nixpkgs' driver runs it.
pub fn systemctl_command(q: &str, user: Option<&str>) -> String {
    match user {
        Some(user) => {
            let q = q.replace('\'', "\\'");
            format!(
                "su -l {user} --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user {q}'"
            )
        }
        None => format!("systemctl {q}"),
    }
}

/// The guest command that says where `unit` (of `user`'s systemd, with
/// `user`) is, by nixpkgs' rules for `wait_for_unit`: exit 0 when it is
/// active, 1 while it may still become so, and 2 or 3 (with nixpkgs'
/// message) when it cannot: it failed, or it is inactive with no job
/// pending (asked again once). A user the guest does not have is 3 too.
/// For an [`UntilMode::Settled`] wait, looped in the guest or tried once.
pub fn unit_check(unit: &str, user: Option<&str>) -> String {
    let q = shell::shell_quote(unit);
    let show = systemctl_command(&format!("show --property=ActiveState --value -- {q}"), user);
    let jobs = systemctl_command("list-jobs --full 2>&1", user);
    let no_user = match user.map(shell::shell_quote) {
        Some(u) => format!(
            "id -u -- {u} >/dev/null 2>&1 || {{ printf 'there is no user \"%s\" in the guest\\n' {u}; exit 3; }}; "
        ),
        None => String::new(),
    };
    format!(
        "{no_user}s=$({show}); case $s in \
         active) exit 0 ;; \
         failed) printf 'unit \"%s\" reached state \"failed\"\\n' {q}; exit 2 ;; \
         inactive) if {jobs} | grep -q 'No jobs'; then s=$({show}); \
           if [ \"$s\" = inactive ]; then printf 'unit \"%s\" is inactive and there are no pending jobs\\n' {q}; exit 3; fi; fi; exit 1 ;; \
         *) exit 1 ;; esac"
    )
}

impl Machine {
    /// Waits for the backdoor shell (the first command after `start()` does this).
    pub async fn connect(&mut self) -> Result<(), MachineError> {
        if self.running.as_ref().is_some_and(|r| r.shell.is_some()) {
            return Ok(());
        }
        if self.running.is_none() {
            self.start(false).await?;
            // A restored machine is connected already.
            if self.running.as_ref().is_some_and(|r| r.shell.is_some()) {
                return Ok(());
            }
        }
        self.log
            .machine(&self.name, "waiting for the VM to finish booting");
        let started = Instant::now();
        let shared = self.shared_dir();
        let r = self.running()?;
        let mut exited = r.exited.clone();
        let dead = async move {
            let _ = exited.wait_for(|s| s.is_some()).await;
        };
        let previous = r.rebooting.take();
        let attempt = async {
            let mut shell = match previous {
                Some(s) => s,
                None => r.accept_shell(&shared).await?,
            };
            shell.wait_for_marker().await?;
            Ok::<Shell, ShellError>(shell)
        };
        let result = tokio::select! {
            s = attempt => Some(s),
            _ = dead => None,
        };
        match result {
            Some(Ok(shell)) => {
                self.running()?.shell = Some(shell);
                self.log.machine(
                    &self.name,
                    &format!(
                        "connected to guest root shell (in {:.2} seconds)",
                        started.elapsed().as_secs_f64()
                    ),
                );
                Ok(())
            }
            Some(Err(ShellError::Closed)) | None => Err(self
                .death("while booting, before its shell was ready")
                .await),
            Some(Err(source)) => Err(MachineError::Shell {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// The backdoor shell, once the guest has booted far enough to give it.
    async fn shell(&mut self) -> Result<&mut Shell, MachineError> {
        self.connect().await?;
        let name = self.name.clone();
        self.running()?
            .shell
            .as_mut()
            .ok_or(MachineError::NotRunning { name })
    }

    async fn run(&mut self, req: Request<'_>, doing: &str) -> Result<Outcome, MachineError> {
        let result = self.shell().await?.run(req).await;
        match result {
            Ok(o) if o.ending == Ending::Cancel => Err(MachineError::Cancelled {
                name: self.name.clone(),
            }),
            Ok(o) => Ok(o),
            Err(e) => Err(self.shell_failed(e, doing).await),
        }
    }

    /// The error for a failed shell call: the machine's death (with its
    /// console tail) if the connection went away.
    async fn shell_failed(&mut self, e: ShellError, doing: &str) -> MachineError {
        match e {
            ShellError::Closed | ShellError::Io(_) => self.death(doing).await,
            source => MachineError::Shell {
                name: self.name.clone(),
                source,
            },
        }
    }

    /// Runs a command; returns its status and exact stdout. A timeout kills
    /// the command in the guest and gives status 124, as `timeout` would.
    pub async fn execute(
        &mut self,
        command: &str,
        timeout: Option<Duration>,
        capture: bool,
    ) -> Result<Outcome, MachineError> {
        let shown = as_written(command);
        let doing = format!("while running `{shown}`");
        let mut out = self
            .run(
                Request::Exec {
                    command,
                    timeout,
                    capture,
                },
                &doing,
            )
            .await?;
        if out.ending == Ending::Timeout {
            self.log.machine(
                &self.name,
                &format!(
                    "command `{shown}` timed out after {} seconds and was killed",
                    timeout.map_or(0.0, |t| t.as_secs_f64())
                ),
            );
            out.status = 124;
        }
        Ok(out)
    }

    /// The connected backdoor shell with bash itself reading the console
    /// ([`Shell::raw_mode`]: a cancelled call settled, the serve loop
    /// ended), for a caller that writes bash to it with [`Shell::write_raw`]
    /// and reads what comes back with [`Shell::read_raw`] (the benchmark's
    /// nixpkgs framing). The next command sets the driver's framing up
    /// again.
    pub async fn raw_shell(&mut self) -> Result<&mut Shell, MachineError> {
        let name = self.name.clone();
        let shell = self.shell().await?;
        match shell.raw_mode().await {
            Ok(()) => Ok(shell),
            Err(source) => Err(MachineError::Shell { name, source }),
        }
    }

    /// Runs `command` in the guest until the condition holds; the guest
    /// loops (50 ms apart), so success is noticed at once.
    pub async fn wait_until(
        &mut self,
        what: &str,
        command: &str,
        mode: UntilMode,
        timeout: Option<Duration>,
    ) -> Result<Outcome, MachineError> {
        let doing = format!("while waiting for {what}");
        let out = self
            .run(
                Request::Until {
                    command,
                    timeout,
                    mode,
                },
                &doing,
            )
            .await?;
        if out.ending == Ending::Timeout {
            let last = String::from_utf8_lossy(&out.output);
            let last = last.trim();
            return Err(MachineError::Timeout {
                name: self.name.clone(),
                what: what.to_string(),
                secs: timeout.map_or(0.0, |t| t.as_secs_f64()),
                detail: format!(
                    " (last try exited with status {}{})",
                    out.status,
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(", output: {last}")
                    }
                ),
            });
        }
        self.settled(mode, &out)?;
        Ok(out)
    }

    /// Runs a wait's `command` one time (a wait the script loops itself,
    /// checking its polling conditions between tries): whether the
    /// condition holds now (`mode`'s rule, [`UntilMode::ends`]), and the
    /// try's status and output. A try still running at `timeout` is killed
    /// and has status 124, as from `execute`; it does not settle a
    /// [`UntilMode::Settled`] wait.
    pub async fn try_once(
        &mut self,
        what: &str,
        command: &str,
        mode: UntilMode,
        timeout: Option<Duration>,
    ) -> Result<(bool, Outcome), MachineError> {
        let doing = format!("while waiting for {what}");
        let mut out = self
            .run(
                Request::Exec {
                    command,
                    timeout,
                    capture: true,
                },
                &doing,
            )
            .await?;
        if out.ending == Ending::Timeout {
            out.status = 124;
            return Ok((mode != UntilMode::Settled && mode.ends(out.status), out));
        }
        self.settled(mode, &out)?;
        Ok((mode.ends(out.status), out))
    }

    /// A [`UntilMode::Settled`] wait that ended with a status but 0 cannot
    /// succeed: its output says why.
    fn settled(&self, mode: UntilMode, out: &Outcome) -> Result<(), MachineError> {
        if mode == UntilMode::Settled && mode.ends(out.status) && out.status != 0 {
            return Err(MachineError::Hopeless {
                name: self.name.clone(),
                message: String::from_utf8_lossy(&out.output).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Waits until `unit` is active; fails at once if it failed, or is
    /// inactive with no job pending (nixpkgs' semantics).
    pub async fn wait_for_unit(
        &mut self,
        unit: &str,
        user: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<(), MachineError> {
        let what = format!("unit {unit} to become active");
        let started = Instant::now();
        let timeout = match self.unit_wait_bus(unit, user, timeout, &what).await? {
            UnitWait::Active => return Ok(()),
            UnitWait::Hopeless(message) => {
                return Err(MachineError::Hopeless {
                    name: self.name.clone(),
                    message,
                })
            }
            UnitWait::TimedOut(state) => {
                return Err(MachineError::Timeout {
                    name: self.name.clone(),
                    what,
                    secs: timeout.map_or(0.0, |t| t.as_secs_f64()),
                    detail: format!(" (its last state was \"{state}\")"),
                })
            }
            UnitWait::Unavailable(why) => {
                let show = if user.is_some() {
                    "systemctl --user show"
                } else {
                    "systemctl show"
                };
                self.log
                    .machine(&self.name, &format!("{why}; polling `{show}` instead"));
                timeout.map(|t| t.saturating_sub(started.elapsed()))
            }
        };
        self.wait_until(&what, &unit_check(unit, user), UntilMode::Settled, timeout)
            .await?;
        Ok(())
    }

    /// Whether `unit` is active now: [`unit_check`] run once (a unit wait
    /// the script loops itself); an error if it cannot become active.
    pub async fn unit_active_now(
        &mut self,
        unit: &str,
        user: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<bool, MachineError> {
        let what = format!("unit {unit} to become active");
        let check = unit_check(unit, user);
        let (active, _) = self
            .try_once(&what, &check, UntilMode::Settled, timeout)
            .await?;
        Ok(active)
    }

    /// A unit wait (of the system's manager, or of `user`'s) that listens
    /// to systemd over D-Bus ([`Shell::unit_wait`]).
    async fn unit_wait_bus(
        &mut self,
        unit: &str,
        user: Option<&str>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<UnitWait, MachineError> {
        let result = self.shell().await?.unit_wait(unit, user, timeout).await;
        match result {
            Ok(w) => Ok(w),
            Err(e) => Err(self
                .shell_failed(e, &format!("while waiting for {what}"))
                .await),
        }
    }

    /// `systemctl show <unit>` as a map; a failed `systemctl` is a
    /// [`MachineError::Hopeless`], as nixpkgs raises `RequestedAssertionFailed`.
    pub async fn get_unit_info(
        &mut self,
        unit: &str,
        user: Option<&str>,
    ) -> Result<HashMap<String, String>, MachineError> {
        let cmd = systemctl_command(
            &format!("--no-pager show {}", shell::shell_quote(unit)),
            user,
        );
        let out = self.execute(&cmd, None, true).await?;
        if out.status != 0 {
            // What nixpkgs raises (`RequestedAssertionFailed`), word for word.
            let under = user
                .map(|u| format!(" under user \"{u}\""))
                .unwrap_or_default();
            return Err(MachineError::Hopeless {
                name: self.name.clone(),
                message: format!(
                    "retrieving systemctl info for unit \"{unit}\"{under} failed with exit code {}",
                    out.status
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.output)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Runs an interactive shell on the terminal until EOF (Ctrl-D).
    pub async fn shell_interact(&mut self) -> Result<(), MachineError> {
        use tokio::io::AsyncReadExt;
        self.connect().await?;
        let name = self.name.clone();
        self.log.machine(
            &name,
            "interactive shell: type commands, Ctrl-D ends it (no prompt is shown)",
        );
        let shell = self
            .running()?
            .shell
            .as_mut()
            .ok_or(MachineError::NotRunning { name: name.clone() })?;
        let mut stdin = tokio::io::stdin();
        let mut stdout = tokio::io::stdout();
        let mut buf = [0u8; 4096];
        let result: Result<(), ShellError> = async {
            shell.raw_mode().await?;
            loop {
                tokio::select! {
                    n = stdin.read(&mut buf) => {
                        let n = n?;
                        if n == 0 { break; }
                        shell.write_raw(&buf[..n]).await?;
                    }
                    out = shell.read_raw() => {
                        stdout.write_all(&out?).await?;
                        stdout.flush().await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        shell.invalidate();
        result.map_err(|source| MachineError::Shell { name, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`unit_check`] in the host's bash, with a `systemctl` that says
    /// what the test wants: its status and message for each state.
    #[test]
    fn the_unit_check_says_where_a_unit_is() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            "#!/bin/sh\ncase $1 in show) echo \"$STATE\" ;; list-jobs) echo \"$JOBS\" ;; esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap()
        );
        let run = |unit: &str, user: Option<&str>, state: &str, jobs: &str| {
            let out = std::process::Command::new("bash")
                .args(["-c", &unit_check(unit, user)])
                .env("PATH", &path)
                .env("STATE", state)
                .env("JOBS", jobs)
                .output()
                .unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            (out.status.code().unwrap(), text.trim_end().to_string())
        };
        let u = "it's \"a\" $unit";
        assert_eq!(run(u, None, "active", ""), (0, String::new()));
        assert_eq!(run(u, None, "activating", ""), (1, String::new()));
        assert_eq!(run(u, None, "inactive", "1 job"), (1, String::new()));
        assert_eq!(
            run(u, None, "failed", ""),
            (2, format!("unit \"{u}\" reached state \"failed\""))
        );
        assert_eq!(
            run(u, None, "inactive", "No jobs."),
            (
                3,
                format!("unit \"{u}\" is inactive and there are no pending jobs")
            )
        );
        assert_eq!(
            run("x", Some("no-such-user-vmt"), "active", ""),
            (
                3,
                "there is no user \"no-such-user-vmt\" in the guest".to_string()
            )
        );
    }

    #[test]
    fn user_systemctl_goes_through_su_like_nixpkgs() {
        assert_eq!(
            systemctl_command("is-active x", None),
            "systemctl is-active x"
        );
        assert!(systemctl_command("start 'a'", Some("alice"))
            .starts_with("su -l alice --shell /bin/sh -c $'XDG_RUNTIME_DIR="));
    }
}
