//! The waits ([`WaitOp`]): each one's probe, in one place. A probe is what
//! the guest runs to see whether the condition holds, and which exit
//! statuses end the wait. The driver either waits with it (the guest loops
//! on it until the condition holds or the time is up) or, with `once`,
//! runs it one time and answers whether the condition holds now: the
//! client then loops itself, checking its polling conditions between
//! tries, as nixpkgs does.

use serde_json::json;

use super::reply::{Answer, CallError};
use serde::Deserialize;

use super::request::{Port, Wait};
use crate::machine::shell::{shell_quote, UntilMode};
use crate::machine::{user_command, Machine};

/// The waits for a condition in the guest, each with its own arguments
/// (besides [`Wait`]'s); what the guest runs for each is its probe
/// ([`WaitOp::probe`]). A new wait is a variant here, its probe below,
/// and its method in the Python client (`machine.py`, `machine.pyi`).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum WaitOp {
    /// `wait_until_succeeds` / `wait_until_fails`.
    WaitUntil {
        command: String,
        /// `False`: wait for the command to fail.
        #[serde(default = "super::request::yes")]
        want_success: bool,
    },
    WaitForFile {
        path: String,
    },
    WaitForOpenPort {
        port: Port,
        #[serde(default = "super::request::localhost")]
        addr: String,
    },
    WaitForClosedPort {
        port: Port,
        #[serde(default = "super::request::localhost")]
        addr: String,
    },
    WaitForOpenUnixSocket {
        addr: String,
        #[serde(default)]
        is_datagram: bool,
    },
    WaitForUnit {
        unit: String,
        /// A unit of this user's systemd instead of the system's.
        user: Option<String>,
    },
    /// Any other op, when read by its name alone ([`super::request::MachineOp`]):
    /// no request holds it.
    #[serde(other)]
    NotAWait,
}

/// What a wait runs in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A command, tried until `mode` says its status ends the wait.
    Command {
        /// For messages: "waiting for {what}", "{what} timed out".
        what: String,
        command: String,
        mode: UntilMode,
    },
    /// A systemd unit (of `user`'s manager, with `user`) to become active,
    /// by nixpkgs' rules: a wait listens to systemd over D-Bus where it
    /// can ([`Machine::wait_for_unit`]); a try runs
    /// [`crate::machine::unit_check`] once.
    Unit { unit: String, user: Option<String> },
}

impl WaitOp {
    /// This wait's probe.
    pub fn probe(&self) -> Probe {
        let command = |what: String, command: String, mode| Probe::Command {
            what,
            command,
            mode,
        };
        match self {
            WaitOp::WaitUntil {
                command: c,
                want_success,
            } => {
                let (mode, wanted) = if *want_success {
                    (UntilMode::Succeed, "succeed")
                } else {
                    (UntilMode::Fail, "fail")
                };
                // Messages name the command as the script wrote it.
                command(format!("`{c}` to {wanted}"), user_command(c), mode)
            }
            WaitOp::WaitForFile { path } => command(
                format!("file {path}"),
                format!("test -e {}", shell_quote(path)),
                UntilMode::Succeed,
            ),
            WaitOp::WaitForOpenPort { port, addr } => command(
                format!("port {} on {addr} to be open", port.0),
                port_probe(addr, port.0),
                UntilMode::Succeed,
            ),
            WaitOp::WaitForClosedPort { port, addr } => command(
                format!("port {} on {addr} to be closed", port.0),
                port_probe(addr, port.0),
                UntilMode::Fail,
            ),
            WaitOp::WaitForOpenUnixSocket { addr, is_datagram } => command(
                format!("unix socket {addr} to accept connections"),
                format!(
                    "nc -{}z -U {}",
                    if *is_datagram { "u" } else { "" },
                    shell_quote(addr)
                ),
                UntilMode::Succeed,
            ),
            WaitOp::WaitForUnit { unit, user } => Probe::Unit {
                unit: unit.clone(),
                user: user.clone(),
            },
            WaitOp::NotAWait => unreachable!("no request holds a NotAWait"),
        }
    }
}

/// Runs a wait: the whole wait, or with `once` one try. A command's wait
/// answers `{"status"}` (its last try's) and that try's output; a try
/// answers `{"done"}` as well, whether the condition holds. A unit's wait
/// answers `null`, its try `{"done"}`.
pub async fn run(m: &mut Machine, wait: Wait) -> Result<Answer, CallError> {
    let timeout = Some(wait.timeout.0);
    let answer = match (wait.op.probe(), wait.once) {
        (
            Probe::Command {
                what,
                command,
                mode,
            },
            false,
        ) => {
            let out = m.wait_until(&what, &command, mode, timeout).await?;
            Answer {
                value: json!({ "status": out.status }),
                bytes: Some(out.output),
            }
        }
        (
            Probe::Command {
                what,
                command,
                mode,
            },
            true,
        ) => {
            let (done, out) = m.try_once(&what, &command, mode, timeout).await?;
            Answer {
                value: json!({ "done": done, "status": out.status }),
                bytes: Some(out.output),
            }
        }
        (Probe::Unit { unit, user }, false) => {
            m.wait_for_unit(&unit, user.as_deref(), timeout).await?;
            Answer::done()
        }
        (Probe::Unit { unit, user }, true) => {
            let done = m.unit_active_now(&unit, user.as_deref(), timeout).await?;
            json!({ "done": done }).into()
        }
    };
    Ok(answer)
}

/// A guest command that succeeds when `addr:port` accepts TCP connections.
/// Local addresses use bash's `/dev/tcp` (no process started); others are
/// bounded to 2 s a try so an unreachable host cannot stall the wait.
pub fn port_probe(addr: &str, port: u16) -> String {
    let target = shell_quote(&format!("/dev/tcp/{addr}/{port}"));
    if matches!(addr, "localhost" | "127.0.0.1" | "::1") {
        format!("exec 3<>{target}")
    } else {
        format!(
            "timeout 2 bash -c {}",
            shell_quote(&format!("exec 3<>{target}"))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::request::Port;

    #[test]
    fn port_probes_do_not_fork_for_localhost() {
        assert_eq!(
            port_probe("localhost", 80),
            "exec 3<>'/dev/tcp/localhost/80'"
        );
        assert!(port_probe("server", 80).starts_with("timeout 2 bash -c"));
    }

    #[test]
    fn each_wait_has_its_probe() {
        let probe = |op: WaitOp| match op.probe() {
            Probe::Command {
                what,
                command,
                mode,
            } => (what, command, mode),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            probe(WaitOp::WaitUntil {
                command: "false".into(),
                want_success: false
            }),
            (
                "`false` to fail".into(),
                user_command("false"),
                UntilMode::Fail
            )
        );
        assert_eq!(
            probe(WaitOp::WaitForFile {
                path: "/a b".into()
            }),
            (
                "file /a b".into(),
                "test -e '/a b'".into(),
                UntilMode::Succeed
            )
        );
        let closed = probe(WaitOp::WaitForClosedPort {
            port: Port(81),
            addr: "10.0.0.1".into(),
        });
        assert_eq!(closed.1, port_probe("10.0.0.1", 81));
        assert_eq!(closed.2, UntilMode::Fail);
        assert_eq!(
            probe(WaitOp::WaitForOpenUnixSocket {
                addr: "/run/s".into(),
                is_datagram: true
            })
            .1,
            "nc -uz -U '/run/s'"
        );
        assert_eq!(
            WaitOp::WaitForUnit {
                unit: "u".into(),
                user: None
            }
            .probe(),
            Probe::Unit {
                unit: "u".into(),
                user: None
            }
        );
    }
}
