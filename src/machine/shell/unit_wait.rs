//! Unit waits over D-Bus ([`Shell::unit_wait`]): the guest runs
//! `systemd-stdio-bridge` on systemd's private socket, with stdout on the
//! console, and the driver speaks D-Bus through it ([`crate::machine::dbus`]).

use std::time::Duration;

use memchr::memmem;

use super::framing::{nonce, printf_format, shell_quote};
use super::{Pending, Shell, ShellError};
use crate::machine::dbus;

/// How [`Shell::unit_wait`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitWait {
    /// The unit is active.
    Active,
    /// The unit cannot become active: it failed, or it is inactive and no
    /// job is pending (nixpkgs' messages).
    Hopeless(String),
    /// The time ran out; the unit's last state.
    TimedOut(String),
    /// The guest cannot be asked over D-Bus: poll instead, for the reason
    /// given (for the log).
    Unavailable(String),
}

/// systemd's manager object and interface.
const SYSTEMD: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// How often a unit wait asks systemd again with no signal in between (a
/// safety net: systemd sends every change to private-bus clients).
const UNIT_RECHECK: Duration = Duration::from_secs(2);

/// How long systemd may take to answer over the bridge before the bridge
/// counts as gone (systemd re-executed, say) and the wait polls instead.
const BUS_SILENCE: Duration = Duration::from_secs(10);

/// The state of one D-Bus session.
struct Bus {
    /// What the guest prints after the bridge's last message when the
    /// bridge exits (`<n> bus-ended`; a D-Bus message starts with `l` or
    /// `B`, a nonce with `v`).
    ended: Vec<u8>,
    serial: u32,
    unit_path: Option<String>,
    /// Job changes matter too (the unit is inactive: is a job pending?).
    watch_jobs: bool,
    /// A signal about the unit (or the jobs) arrived since the last look.
    changed: bool,
    /// The unit's `ActiveState` as the last signal that carried it said.
    state: Option<String>,
}

impl Shell {
    /// Waits until systemd says `unit` is active, listening to systemd
    /// instead of asking it again and again: the guest runs
    /// `systemd-stdio-bridge` on its private socket with stdout on this
    /// console, and the driver writes D-Bus calls into the bridge through
    /// a FIFO (one `printf` each, so bash never reads D-Bus bytes). systemd
    /// sends every unit change to private-bus clients, so a change is seen
    /// when it happens, and the guest does nothing in between. With
    /// `user`, the bridge (still root's) goes to that user's manager
    /// (`/run/user/<uid>/systemd/private`); a user the guest does not have
    /// is hopeless, and a manager that does not run yet is polled for.
    ///
    /// The checks are those of nixpkgs' `wait_for_unit`: `active` ends the
    /// wait, `failed` is hopeless, and so is `inactive` when no job at all
    /// is pending (asked again once, as nixpkgs does).
    pub async fn unit_wait(
        &mut self,
        unit: &str,
        user: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<UnitWait, ShellError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // On the console: systemd-stdio-bridge makes its stdout
        // non-blocking, and on the port that open file is also the serve
        // loop's stdin, whose reads would then fail.
        self.ready(false).await?;
        let n = nonce();
        self.pending = Some(Pending::Bus(n.clone()));
        let user_arg = user.map(|u| format!(" {}", shell_quote(u)));
        self.send_line(&format!(
            "__vmt_bus_start {n}{}\n",
            user_arg.unwrap_or_default()
        ))
        .await?;
        self.read_until(format!("{n} ").as_bytes()).await?;
        let answer = self.read_until(b"\n").await?;
        if answer != b"bridge" {
            self.pending = None;
            let user = user.unwrap_or("root");
            return Ok(match &answer[..] {
                b"no-user" => UnitWait::Hopeless(format!("there is no user \"{user}\" in the guest")),
                b"no-manager" => UnitWait::Unavailable(format!(
                    "the systemd user manager of \"{user}\" does not run (yet)"
                )),
                _ => UnitWait::Unavailable(
                    "systemd-stdio-bridge or systemd's private socket is not available in the guest"
                        .into(),
                ),
            });
        }
        let result = match self.bus_session(&n, unit, deadline).await {
            Err(ShellError::BusGone(what)) => Ok(UnitWait::Unavailable(format!(
                "systemd-stdio-bridge {what} (systemd re-executed?)"
            ))),
            Err(e @ (ShellError::Closed | ShellError::Io(_))) => return Err(e),
            r => r,
        };
        // The wait returns now; the next call reads the guest's answer.
        self.send_bus_stop(&n).await?;
        result
    }

    /// Asks the guest to end a D-Bus session (it kills the bridge); the
    /// next call waits for its answer.
    pub(super) async fn send_bus_stop(&mut self, n: &str) -> Result<(), ShellError> {
        self.send_line(&format!("__vmt_bus_stop {n}\n")).await?;
        self.pending = Some(Pending::BusStopping(n.to_string()));
        Ok(())
    }

    async fn bus_session(
        &mut self,
        n: &str,
        unit: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<UnitWait, ShellError> {
        let mut bus = Bus {
            ended: format!("{n} bus-ended\n").into_bytes(),
            serial: 0,
            unit_path: None,
            watch_jobs: false,
            changed: false,
            state: None,
        };
        self.bus_write(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").await?;
        // The bridge answers `OK <guid>`, unless it could not connect to
        // systemd and exited.
        let hello = async {
            loop {
                if let Some(i) = memmem::find(&self.buf, b"\r\n") {
                    let line = self.buf[..i].to_vec();
                    self.buf.drain(..i + 2);
                    return Ok::<_, ShellError>(Some(line));
                }
                if let Some(i) = memmem::find(&self.buf, &bus.ended) {
                    self.buf.drain(..i + bus.ended.len());
                    return Ok(None);
                }
                self.fill().await?;
            }
        };
        let Some(hello) = tokio::time::timeout(BUS_SILENCE, hello)
            .await
            .unwrap_or(Ok(None))?
        else {
            return Ok(UnitWait::Unavailable(
                "systemd-stdio-bridge could not connect to systemd".into(),
            ));
        };
        if !hello.starts_with(b"OK ") {
            return Err(ShellError::Protocol(format!(
                "systemd-stdio-bridge refused the connection: {}",
                String::from_utf8_lossy(&hello)
            )));
        }
        let path = match self
            .bus_call(&mut bus, SYSTEMD, MANAGER, "LoadUnit", &[unit])
            .await?
        {
            Ok(m) => m
                .first_string()
                .map_err(|e| ShellError::Protocol(e.to_string()))?,
            Err(message) => {
                return Ok(UnitWait::Hopeless(format!(
                    "systemd cannot load unit \"{unit}\": {message}"
                )))
            }
        };
        bus.unit_path = Some(path.clone());
        let mut asked_again = false;
        loop {
            // The state a signal brought, else systemd's answer now (which
            // is newer than any signal that arrived before it).
            let state = match bus.state.take() {
                Some(state) => state,
                None => {
                    let state = self.bus_active_state(&mut bus, &path).await?;
                    bus.state = None;
                    state
                }
            };
            bus.changed = false;
            bus.watch_jobs = state == "inactive";
            match state.as_str() {
                "active" => return Ok(UnitWait::Active),
                "failed" => {
                    return Ok(UnitWait::Hopeless(format!(
                        "unit \"{unit}\" reached state \"failed\""
                    )))
                }
                "inactive" => {
                    let jobs = self
                        .bus_call(&mut bus, SYSTEMD, MANAGER, "ListJobs", &[])
                        .await?
                        .map_err(ShellError::Protocol)?;
                    let none = jobs
                        .array_is_empty()
                        .map_err(|e| ShellError::Protocol(e.to_string()))?;
                    if none {
                        if asked_again {
                            return Ok(UnitWait::Hopeless(format!(
                                "unit \"{unit}\" is inactive and there are no pending jobs"
                            )));
                        }
                        asked_again = true;
                        continue;
                    }
                }
                _ => {}
            }
            asked_again = false;
            // Wait for a change of the unit (or of the job queue, while it
            // is inactive), the safety recheck, or the deadline.
            let recheck = tokio::time::Instant::now() + UNIT_RECHECK;
            while !bus.changed {
                let until = deadline.map_or(recheck, |d| d.min(recheck));
                match tokio::time::timeout_at(until, self.bus_message(&mut bus)).await {
                    Ok(m) => {
                        m?;
                    }
                    Err(_) if deadline.is_some_and(|d| d <= until) => {
                        return Ok(UnitWait::TimedOut(state));
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// `ActiveState` of the unit at `path`.
    async fn bus_active_state(&mut self, bus: &mut Bus, path: &str) -> Result<String, ShellError> {
        self.bus_call(
            bus,
            path,
            "org.freedesktop.DBus.Properties",
            "Get",
            &["org.freedesktop.systemd1.Unit", "ActiveState"],
        )
        .await?
        .map_err(ShellError::Protocol)?
        .variant_string()
        .map_err(|e| ShellError::Protocol(e.to_string()))
    }

    /// Writes bytes into the bridge.
    async fn bus_write(&mut self, bytes: &[u8]) -> Result<(), ShellError> {
        let line = format!("printf '{}' >&\"$__vmt_bus\"\n", printf_format(bytes));
        self.send_line(&line).await
    }

    /// Calls a method; the reply, or the D-Bus error's name and message.
    async fn bus_call(
        &mut self,
        bus: &mut Bus,
        path: &str,
        interface: &str,
        member: &str,
        args: &[&str],
    ) -> Result<Result<dbus::Message, String>, ShellError> {
        bus.serial += 1;
        let serial = bus.serial;
        self.bus_write(&dbus::method_call(serial, path, interface, member, args))
            .await?;
        loop {
            // The bridge is gone if systemd does not answer (it re-executed,
            // say): the wait polls instead.
            let m = tokio::time::timeout(BUS_SILENCE, self.bus_message(bus))
                .await
                .map_err(|_| ShellError::BusGone("stopped answering"))??;
            if m.reply_serial != Some(serial) {
                continue;
            }
            return Ok(match m.kind {
                dbus::Kind::Error => Err(format!(
                    "{} ({})",
                    m.first_string().unwrap_or_default(),
                    m.error_name.as_deref().unwrap_or("unnamed D-Bus error")
                )),
                _ => Ok(m),
            });
        }
    }

    /// The next message from the bridge; a signal that concerns the wait
    /// marks it as changed.
    async fn bus_message(&mut self, bus: &mut Bus) -> Result<dbus::Message, ShellError> {
        loop {
            if self.buf.starts_with(&bus.ended) {
                self.buf.drain(..bus.ended.len());
                return Err(ShellError::BusGone("ended: systemd closed the connection"));
            }
            if !self.buf.is_empty() && bus.ended.starts_with(&self.buf) {
                self.fill().await?;
                continue;
            }
            match dbus::message_len(&self.buf) {
                Ok(Some(len)) if self.buf.len() >= len => {
                    let m = dbus::parse(&self.buf[..len])
                        .map_err(|e| ShellError::Protocol(e.to_string()))?;
                    self.buf.drain(..len);
                    if m.kind == dbus::Kind::Signal {
                        let about_unit = m.path.is_some() && m.path == bus.unit_path;
                        let about_jobs = bus.watch_jobs
                            && matches!(m.member.as_deref(), Some("JobNew" | "JobRemoved"));
                        bus.changed |= about_unit || about_jobs;
                        if about_unit {
                            if let Some(state) = m
                                .changed_string("org.freedesktop.systemd1.Unit", "ActiveState")
                                .map_err(|e| ShellError::Protocol(e.to_string()))?
                            {
                                bus.state = Some(state);
                            }
                        }
                    }
                    return Ok(m);
                }
                Ok(_) => self.fill().await?,
                Err(e) => return Err(ShellError::Protocol(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::shell::tests::{bootstrapped_pair, next_line, unprintf};
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixStream;

    /// A fake guest for unit waits: answers the bash side of the session
    /// and plays systemd with the given `ActiveState` answers to `Get`,
    /// `ListJobs` always empty; after the first `Get` it sends `signals`
    /// (states carried by `PropertiesChanged`). Returns the calls it saw.
    async fn fake_bus_guest(
        mut guest: UnixStream,
        gets: Vec<&'static str>,
        signals: Vec<&'static str>,
    ) -> Vec<String> {
        use super::dbus::fake;
        const PATH: &str = "/org/freedesktop/systemd1/unit/slow_2eservice";
        let mut reader = tokio::io::BufReader::new(&mut guest);
        let mut calls = Vec::new();
        let mut gets = gets.into_iter();
        let mut signals = Some(signals);
        loop {
            let line = next_line(&mut reader).await;
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer: Vec<u8> = match words[0] {
                "__vmt_bus_start" => format!("{} bridge\n", words[1]).into_bytes(),
                "__vmt_bus_stop" => {
                    let done = format!("{} bus-stopped\n", words[1]);
                    reader.get_mut().write_all(done.as_bytes()).await.unwrap();
                    return calls;
                }
                "printf" => {
                    let f = line.split('\'').nth(1).unwrap();
                    let bytes = unprintf(f);
                    if bytes.starts_with(b"\0AUTH") {
                        b"OK 0123456789abcdef\r\n".to_vec()
                    } else {
                        let m = dbus::parse(&bytes).unwrap();
                        let member = m.member.clone().unwrap();
                        calls.push(member.clone());
                        match member.as_str() {
                            "LoadUnit" => fake::reply_path(m.serial, PATH),
                            "ListJobs" => fake::reply_no_jobs(m.serial),
                            _ => {
                                let mut a = fake::reply_variant(m.serial, gets.next().unwrap());
                                for s in signals.take().unwrap_or_default() {
                                    a.extend(fake::active_state_signal(PATH, s));
                                }
                                a
                            }
                        }
                    }
                }
                other => panic!("unexpected line {other:?}"),
            };
            reader.get_mut().write_all(&answer).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_unit_wait_ends_on_the_signal_that_says_active() {
        let (mut shell, guest) = bootstrapped_pair();
        let fake = tokio::spawn(fake_bus_guest(
            guest,
            vec!["activating"],
            vec!["activating", "active"],
        ));
        let w = shell
            .unit_wait("slow.service", None, Some(Duration::from_secs(30)))
            .await;
        assert_eq!(w.unwrap(), UnitWait::Active);
        // One `Get`: the signals said the rest.
        assert_eq!(fake.await.unwrap(), ["LoadUnit", "Get"]);
        // The wait returned before the guest confirmed the end of the
        // session; the next call reads that first.
        assert!(matches!(shell.pending, Some(Pending::BusStopping(_))));
        shell.ready(true).await.unwrap();
        assert!(shell.pending.is_none());
    }

    #[tokio::test]
    async fn an_inactive_unit_with_no_job_is_hopeless_after_a_second_look() {
        let (mut shell, guest) = bootstrapped_pair();
        let fake = tokio::spawn(fake_bus_guest(guest, vec!["inactive", "inactive"], vec![]));
        let w = shell.unit_wait("slow.service", None, None).await.unwrap();
        assert_eq!(
            w,
            UnitWait::Hopeless(
                "unit \"slow.service\" is inactive and there are no pending jobs".into()
            )
        );
        assert_eq!(
            fake.await.unwrap(),
            ["LoadUnit", "Get", "ListJobs", "Get", "ListJobs"]
        );
    }

    #[tokio::test]
    async fn a_unit_wait_times_out_with_the_last_state() {
        let (mut shell, guest) = bootstrapped_pair();
        let fake = tokio::spawn(fake_bus_guest(
            guest,
            vec!["activating"],
            vec!["deactivating"],
        ));
        let w = shell
            .unit_wait("slow.service", None, Some(Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(w, UnitWait::TimedOut("deactivating".into()));
        assert_eq!(fake.await.unwrap(), ["LoadUnit", "Get"]);
    }

    #[tokio::test]
    async fn without_a_bridge_or_a_manager_the_wait_polls_and_without_the_user_it_fails() {
        let (mut shell, mut guest) = bootstrapped_pair();
        let answers = ["no-bridge", "no-manager", "no-user"];
        let fake = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut guest);
            let mut lines = Vec::new();
            for answer in answers {
                let line = next_line(&mut reader).await;
                let n = line.split_whitespace().nth(1).unwrap().to_string();
                lines.push(line);
                reader
                    .get_mut()
                    .write_all(format!("{n} {answer}\n").as_bytes())
                    .await
                    .unwrap();
            }
            lines
        });
        let system = shell.unit_wait("slow.service", None, None).await.unwrap();
        let user = Some("al ice");
        let manager = shell.unit_wait("x.service", user, None).await.unwrap();
        let nobody = shell.unit_wait("x.service", user, None).await.unwrap();
        let lines = fake.await.unwrap();
        assert_eq!(lines[0].split_whitespace().count(), 2, "{lines:?}");
        assert!(lines[1].trim_end().ends_with(" 'al ice'"), "{lines:?}");
        assert_eq!(
            system,
            UnitWait::Unavailable(
                "systemd-stdio-bridge or systemd's private socket is not available in the guest"
                    .into()
            )
        );
        assert_eq!(
            manager,
            UnitWait::Unavailable(
                "the systemd user manager of \"al ice\" does not run (yet)".into()
            )
        );
        assert_eq!(
            nobody,
            UnitWait::Hopeless("there is no user \"al ice\" in the guest".into())
        );
        assert!(shell.pending.is_none());
    }
}
