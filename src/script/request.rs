//! The script's requests, typed (docs/contracts.md, Contract 3): one variant
//! per op, holding that op's arguments, which are the Python keyword
//! arguments under the same names. A default is written once, with the
//! argument it belongs to (its type or its `serde(default)`); a `null`
//! argument is an absent one (Python's `None`: "the default"). Arguments
//! the driver does not read (`execute`'s `check_return`, `shell_interact`'s
//! `address`) are accepted and ignored.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::probe::WaitOp;
use super::reply::CallError;

/// One line from the script, before its arguments are read.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: u64,
    op: String,
    #[serde(default)]
    machine: Option<String>,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    noreply: bool,
}

/// One request: its id, and what it asks for, or why that could not be
/// read (which the reply then says, under the request's id).
#[derive(Debug)]
pub struct Call {
    pub id: u64,
    /// The op as the script named it, for messages.
    pub op: String,
    /// Log lines: the script does not wait for them, so no answer is sent
    /// (a failure is logged instead).
    pub noreply: bool,
    pub request: Result<Request, CallError>,
}

impl Call {
    /// Reads one request line. `Err` only when the line is no request at
    /// all (no id to answer under); bad arguments are a `Call` whose
    /// `request` is the usage error to answer with.
    pub fn parse(line: &str) -> Result<Call, serde_json::Error> {
        let e: Envelope = serde_json::from_str(line)?;
        let request = Request::parse(&e.op, e.machine, e.args);
        Ok(Call {
            id: e.id,
            op: e.op,
            noreply: e.noreply,
            request,
        })
    }

    /// Whether this is a `cancel` (Ctrl-C in the REPL).
    pub fn is_cancel(&self) -> bool {
        matches!(self.request, Ok(Request::Cancel))
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq)]
pub enum Request {
    /// `cancel {id}`: abandon the request in progress.
    Cancel,
    /// An op with `"machine": null`.
    Global(GlobalOp),
    /// An op on the machine called `machine`.
    Machine { machine: String, op: MachineOp },
}

impl Request {
    /// Reads `op`'s arguments: a global op when `machine` is `None`.
    pub fn parse(op: &str, machine: Option<String>, args: Value) -> Result<Request, CallError> {
        if op == "cancel" {
            return Ok(Request::Cancel);
        }
        let args = without_nulls(args);
        let parsed = match machine {
            None => serde_json::from_value(json!({ "op": op, "args": args })).map(Request::Global),
            Some(machine) => MachineOp::parse(op, args).map(|op| Request::Machine { machine, op }),
        };
        parsed.map_err(|source| CallError::BadRequest {
            op: op.to_string(),
            source,
        })
    }
}

/// The arguments with `null` ones left out (and no arguments as `{}`).
fn without_nulls(args: Value) -> Value {
    match args {
        Value::Null => json!({}),
        Value::Object(mut map) => {
            map.retain(|_, v| !v.is_null());
            Value::Object(map)
        }
        other => other,
    }
}

/// The ops with `"machine": null`: the log, subtests, the run, the VLANs.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum GlobalOp {
    /// The client's first request: the machines, VLANs, output directory.
    Hello {},
    /// `log.log(...)` and the others: one line.
    Log { message: String },
    /// What the script writes to `sys.stdout`.
    Stdout { text: String },
    /// `log.nested(...)` begins.
    LogBegin { message: String },
    /// `log.nested(...)` ends.
    LogEnd {},
    /// `subtest(name)` begins.
    SubtestBegin { name: String },
    /// `subtest(name)` ends, with the error's text if it raised.
    SubtestEnd { error: Option<String> },
    /// `serial_stdout_on()` / `serial_stdout_off()`.
    SerialStdout {
        #[serde(default = "yes")]
        on: bool,
    },
    /// `create_machine(start_command, name=, keep_machine_state=)`.
    CreateMachine {
        start_command: String,
        name: Option<String>,
        #[serde(default)]
        keep_machine_state: bool,
    },
    /// `join_all()`: waits until every machine has shut down.
    JoinAll {},
    /// `vlan<N>.<action>(...)`.
    Vlan(VlanRequest),
}

/// `vlan {vlan, action, ...}`.
#[derive(Debug, PartialEq, Deserialize)]
pub struct VlanRequest {
    pub vlan: u32,
    #[serde(flatten)]
    pub action: VlanOp,
}

/// What a `vlan` request does; machines are given by name.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum VlanOp {
    /// Takes the machine's link on this VLAN down.
    Block { machine: String },
    /// Brings it up again.
    Unblock { machine: String },
    /// Only machines in the same group reach each other.
    Partition { groups: Vec<Vec<String>> },
    /// Undoes every fault on this VLAN.
    Heal,
    /// Drops a fraction of the frames (to and from `machine`, or all).
    Loss {
        fraction: Fraction,
        machine: Option<String>,
    },
    /// Delays frames (to and from `machine`, or all).
    Delay {
        seconds: Seconds,
        machine: Option<String>,
    },
    /// The switch's counters.
    Stats,
}

/// The ops on one machine; each is the `Machine` method of the same name
/// (`execute` also backs `succeed` and `fail`; the waits are [`WaitOp`]).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum MachineOp {
    /// A wait for a condition in the guest ([`WaitOp`]): read by
    /// [`MachineOp::parse`], not under a name of its own.
    #[serde(skip)]
    Wait(Wait),
    Start {
        #[serde(default)]
        allow_reboot: bool,
    },
    Connect {},
    IsUp {},
    /// nixpkgs' `QemuMachine` attributes (`booted`, `pid`, the directories).
    Status {},
    /// `connected = False`: the next command waits for a new backdoor shell.
    Disconnect {},
    /// Refused while QEMU runs.
    SetStateDir {
        path: PathBuf,
    },
    Execute {
        command: String,
        /// `False`: the output is not kept.
        #[serde(default = "yes")]
        check_output: bool,
        /// No limit unless given.
        timeout: Option<Seconds>,
    },
    GetUnitInfo {
        unit: String,
        user: Option<String>,
    },
    WaitForConsoleText {
        regex: String,
        /// No limit unless given.
        timeout: Option<Seconds>,
    },
    GetConsoleLog {},
    Shutdown {},
    Crash {},
    Reboot {},
    WaitForShutdown {},
    Release {},
    SendMonitorCommand {
        command: String,
    },
    /// One QMP command (an extension: nixpkgs reaches QMP only for events).
    Qmp {
        execute: String,
        arguments: Option<Value>,
    },
    /// The next QMP event (`wait_for_qmp_event` filters them in Python).
    NextQmpEvent {
        #[serde(default)]
        timeout: EventLimit,
    },
    SendConsole {
        chars: String,
    },
    Screenshot {
        filename: String,
    },
    CopyFromHost {
        source: PathBuf,
        target: String,
    },
    CopyFromMachine {
        source: String,
        #[serde(default)]
        target_dir: String,
    },
    /// Takes the machine's links on every VLAN down.
    Block {},
    /// Brings them up again.
    Unblock {},
    ShellInteract {},
    ConsoleInteract {},
}

impl MachineOp {
    /// Reads a machine op: a wait ([`WaitOp`]) with the arguments every
    /// wait takes ([`Wait`]), or another op.
    fn parse(op: &str, args: Value) -> Result<MachineOp, serde_json::Error> {
        // A wait's name is one `WaitOp` reads as a wait when it is given
        // no arguments; any other comes back as `NotAWait`.
        let named = serde_json::from_value::<WaitOp>(json!({ "op": op }));
        if matches!(named, Ok(WaitOp::NotAWait)) {
            return serde_json::from_value(json!({ "op": op, "args": args }));
        }
        let WaitArgs { timeout, once } = serde_json::from_value(args.clone())?;
        let op = serde_json::from_value(json!({ "op": op, "args": args }))?;
        Ok(MachineOp::Wait(Wait { op, timeout, once }))
    }
}

/// A wait for a condition in the guest: which one, and the arguments
/// every wait takes.
#[derive(Debug, PartialEq)]
pub struct Wait {
    pub op: WaitOp,
    pub timeout: WaitLimit,
    /// Try once and answer whether the condition holds now, instead of
    /// waiting for it: the client then loops, checking its polling
    /// conditions between tries.
    pub once: bool,
}

/// The arguments every wait takes.
#[derive(Deserialize)]
struct WaitArgs {
    #[serde(default)]
    timeout: WaitLimit,
    #[serde(default)]
    once: bool,
}

pub(super) fn yes() -> bool {
    true
}

pub(super) fn localhost() -> String {
    "localhost".to_string()
}

/// A number of seconds (a timeout, a delay): finite and not negative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = f64::deserialize(d)?;
        Duration::try_from_secs_f64(s).map(Seconds).map_err(|_| {
            D::Error::invalid_value(Unexpected::Float(s), &"a non-negative number of seconds")
        })
    }
}

/// A wait's time limit: `DEFAULT` seconds unless the script gives one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit<const DEFAULT: u64>(pub Duration);

/// The limit of a wait (`wait_until_*`, `wait_for_*`): 900 s, as nixpkgs.
pub type WaitLimit = Limit<900>;

/// The limit of `wait_for_qmp_event`: 600 s, as nixpkgs.
pub type EventLimit = Limit<600>;

impl<const DEFAULT: u64> Default for Limit<DEFAULT> {
    fn default() -> Self {
        Limit(Duration::from_secs(DEFAULT))
    }
}

impl<'de, const DEFAULT: u64> Deserialize<'de> for Limit<DEFAULT> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Seconds::deserialize(d).map(|s| Limit(s.0))
    }
}

/// A TCP port, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = u64::deserialize(d)?;
        match u16::try_from(p) {
            Ok(p) if p > 0 => Ok(Port(p)),
            _ => Err(D::Error::invalid_value(
                Unexpected::Unsigned(p),
                &"a TCP port, 1..65535",
            )),
        }
    }
}

/// A fraction of the frames, 0.0..=1.0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction(pub f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&f) {
            Ok(Fraction(f))
        } else {
            Err(D::Error::invalid_value(
                Unexpected::Float(f),
                &"a fraction between 0.0 and 1.0",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine_op(op: &str, args: Value) -> Result<MachineOp, CallError> {
        match Request::parse(op, Some("m".into()), args)? {
            Request::Machine { op, .. } => Ok(op),
            other => panic!("{other:?}"),
        }
    }

    fn global_op(op: &str, args: Value) -> Result<GlobalOp, CallError> {
        match Request::parse(op, None, args)? {
            Request::Global(op) => Ok(op),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absent_and_null_arguments_take_their_defaults() {
        let want = MachineOp::Wait(Wait {
            op: WaitOp::WaitUntil {
                command: "true".into(),
                want_success: true,
            },
            timeout: Limit(Duration::from_secs(900)),
            once: false,
        });
        assert_eq!(
            machine_op("wait_until", json!({"command": "true"})).unwrap(),
            want
        );
        assert_eq!(
            machine_op(
                "wait_until",
                json!({"command": "true", "timeout": null, "want_success": null, "once": null})
            )
            .unwrap(),
            want
        );
        assert_eq!(
            machine_op(
                "execute",
                json!({"command": "x", "check_return": true, "timeout": 1.5})
            )
            .unwrap(),
            MachineOp::Execute {
                command: "x".into(),
                check_output: true,
                timeout: Some(Seconds(Duration::from_millis(1500))),
            }
        );
        assert_eq!(
            machine_op("next_qmp_event", Value::Null).unwrap(),
            MachineOp::NextQmpEvent {
                timeout: Limit(Duration::from_secs(600))
            }
        );
        assert_eq!(
            machine_op("wait_for_open_port", json!({"port": 80})).unwrap(),
            MachineOp::Wait(Wait {
                op: WaitOp::WaitForOpenPort {
                    port: Port(80),
                    addr: "localhost".into(),
                },
                timeout: WaitLimit::default(),
                once: false,
            })
        );
        assert_eq!(
            machine_op(
                "wait_for_unit",
                json!({"unit": "u", "user": "alice", "timeout": 3, "once": true})
            )
            .unwrap(),
            MachineOp::Wait(Wait {
                op: WaitOp::WaitForUnit {
                    unit: "u".into(),
                    user: Some("alice".into()),
                },
                timeout: Limit(Duration::from_secs(3)),
                once: true,
            })
        );
        assert_eq!(
            global_op("serial_stdout", json!({})).unwrap(),
            GlobalOp::SerialStdout { on: true }
        );
        assert_eq!(
            machine_op("shell_interact", json!({"address": "x"})).unwrap(),
            MachineOp::ShellInteract {}
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors_that_name_the_op() {
        for (op, args, wanted) in [
            ("execute", json!({}), "missing field `command`"),
            ("execute", json!({"command": 1}), "expected a string"),
            (
                "execute",
                json!({"command": "x", "timeout": -1}),
                "non-negative number of seconds",
            ),
            ("wait_for_open_port", json!({"port": 0}), "1..65535"),
            ("wait_for_open_port", json!({"port": 70000}), "1..65535"),
            ("wait_for_file", json!({}), "missing field `path`"),
            (
                "wait_for_file",
                json!({"path": "/x", "timeout": -1}),
                "non-negative number of seconds",
            ),
            (
                "wait_for_file",
                json!({"path": "/x", "once": 1}),
                "a boolean",
            ),
            // No request holds the marker of the ops that are no waits.
            ("not_a_wait", json!({}), "unknown variant `not_a_wait`"),
            ("frobnicate", json!({}), "unknown variant `frobnicate`"),
            // A global op is not a machine op.
            ("hello", json!({}), "unknown variant `hello`"),
        ] {
            let e = machine_op(op, args).unwrap_err();
            assert_eq!(e.kind(), super::super::ErrorKind::Usage);
            let text = e.to_string();
            assert!(text.starts_with(op) && text.contains(wanted), "{text}");
        }
    }

    #[test]
    fn vlan_requests_are_read_by_action() {
        assert_eq!(
            global_op(
                "vlan",
                json!({"vlan": 1, "action": "partition", "groups": [["a", "b"], ["c"]]})
            )
            .unwrap(),
            GlobalOp::Vlan(VlanRequest {
                vlan: 1,
                action: VlanOp::Partition {
                    groups: vec![vec!["a".into(), "b".into()], vec!["c".into()]]
                }
            })
        );
        assert_eq!(
            global_op(
                "vlan",
                json!({"vlan": 2, "action": "loss", "fraction": 0.5, "machine": null})
            )
            .unwrap(),
            GlobalOp::Vlan(VlanRequest {
                vlan: 2,
                action: VlanOp::Loss {
                    fraction: Fraction(0.5),
                    machine: None
                }
            })
        );
        assert_eq!(
            global_op("vlan", json!({"vlan": 1, "action": "heal"})).unwrap(),
            GlobalOp::Vlan(VlanRequest {
                vlan: 1,
                action: VlanOp::Heal
            })
        );
        for bad in [
            json!({"vlan": 1, "action": "loss", "fraction": 1.5}),
            json!({"vlan": 1, "action": "delay"}),
            json!({"vlan": 1, "action": "explode"}),
            json!({"action": "heal"}),
        ] {
            assert!(global_op("vlan", bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_without_an_id_are_no_requests_and_cancel_is_recognised() {
        assert!(Call::parse("{\"op\": \"log\"}").is_err());
        assert!(Call::parse("not json").is_err());
        let c = Call::parse(r#"{"id": 3, "op": "cancel", "machine": null, "args": {"id": 2}}"#)
            .unwrap();
        assert!(c.is_cancel());
        let c = Call::parse(r#"{"id": 4, "op": "log", "args": {}, "noreply": true}"#).unwrap();
        assert!(c.noreply && c.request.is_err());
    }
}
