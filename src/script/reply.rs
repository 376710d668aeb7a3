//! The driver's replies (docs/contracts.md, Contract 3): a value, with raw
//! bytes after the line when it carries command output, or an error of a
//! kind the Python client turns into its exception type.

use serde::Serialize;
use serde_json::Value;

use crate::machine::MachineError;

/// A successful answer: a JSON value and, for command output, raw bytes.
#[derive(Debug, Default)]
pub struct Answer {
    pub value: Value,
    pub bytes: Option<Vec<u8>>,
}

impl Answer {
    /// `null`: the op has nothing to say but that it is done.
    pub fn done() -> Answer {
        Answer::default()
    }
}

impl From<Value> for Answer {
    fn from(value: Value) -> Self {
        Answer { value, bytes: None }
    }
}

/// What a failed call raises in the script: `python/nix_vmtest/errors.py`
/// maps each kind (`ERROR_KINDS`) to an exception type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// `RequestedAssertionFailed`: a wait that cannot succeed (a unit that
    /// failed), as nixpkgs raises it. The client raises it itself too,
    /// e.g. for `succeed`.
    Assertion,
    /// `MachineTimeout`: a wait or command ran past its limit.
    Timeout,
    /// `MachineError`: the guest died or failed; the message holds the
    /// console's last lines.
    Machine,
    /// `UsageError`: a bad argument, an unknown machine or VLAN.
    Usage,
    /// `Unsupported`: a tool is missing. Understood by the client; the
    /// driver sends none today.
    Unsupported,
    /// `Cancelled`: the call was interrupted (`cancel`, Ctrl-C).
    Cancelled,
}

/// A failed call, as the script sees it: [`CallError::kind`] and the
/// error's text.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The op is unknown, or its arguments do not fit it.
    #[error("{op}: {source}")]
    BadRequest {
        op: String,
        source: serde_json::Error,
    },
    /// A machine op named no machine of the run.
    #[error("no machine named {name:?}; machines are: {}", .known.join(", "))]
    NoMachine { name: String, known: Vec<String> },
    /// A VLAN request named no machine of the run.
    #[error("vlan{vlan}: no machine named {name:?}; machines are: {}", .known.join(", "))]
    NoVlanMachine {
        vlan: u32,
        name: String,
        known: Vec<String>,
    },
    /// A VLAN request named no VLAN of the run.
    #[error("there is no VLAN {vlan}; VLANs are: {known:?}")]
    NoVlan { vlan: u32, known: Vec<u32> },
    /// `create_machine` was refused.
    #[error(transparent)]
    CreateMachine(Box<dyn std::error::Error + Send + Sync>),
    /// The machine failed the op.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// A `cancel` came while the op ran.
    #[error("{op} was interrupted")]
    Interrupted { op: String },
    /// The script closed its end while the op ran.
    #[error("the script went away")]
    ScriptGone,
}

impl CallError {
    /// What the script raises for it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CallError::BadRequest { .. }
            | CallError::NoMachine { .. }
            | CallError::NoVlanMachine { .. }
            | CallError::NoVlan { .. }
            | CallError::CreateMachine(_) => ErrorKind::Usage,
            CallError::Machine(e) => match e {
                MachineError::Timeout { .. } => ErrorKind::Timeout,
                MachineError::Hopeless { .. } => ErrorKind::Assertion,
                MachineError::Usage { .. } | MachineError::BadRegex { .. } => ErrorKind::Usage,
                MachineError::Cancelled { .. } => ErrorKind::Cancelled,
                _ => ErrorKind::Machine,
            },
            CallError::Interrupted { .. } | CallError::ScriptGone => ErrorKind::Cancelled,
        }
    }
}

#[derive(Serialize)]
struct OkReply<'a> {
    id: u64,
    ok: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<usize>,
}

#[derive(Serialize)]
struct ErrReply {
    id: u64,
    err: WireError,
}

#[derive(Serialize)]
struct WireError {
    kind: ErrorKind,
    message: String,
}

/// The reply to request `id`: one JSON line, then the answer's bytes.
pub fn encode(id: u64, result: &Result<Answer, CallError>) -> Vec<u8> {
    let (header, bytes) = match result {
        Ok(a) => (
            serde_json::to_vec(&OkReply {
                id,
                ok: &a.value,
                bytes: a.bytes.as_ref().map(Vec::len),
            }),
            a.bytes.as_deref(),
        ),
        Err(e) => (
            serde_json::to_vec(&ErrReply {
                id,
                err: WireError {
                    kind: e.kind(),
                    message: e.to_string(),
                },
            }),
            None,
        ),
    };
    // Serializing these cannot fail: string keys, and values that are JSON.
    let mut line = header.unwrap_or_default();
    line.push(b'\n');
    if let Some(b) = bytes {
        line.extend_from_slice(b);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_with_bytes_announce_their_length() {
        let a = Answer {
            value: json!({"status": 0}),
            bytes: Some(b"\xffok".to_vec()),
        };
        let out = encode(7, &Ok(a));
        let nl = out.iter().position(|&b| b == b'\n').unwrap();
        let head: Value = serde_json::from_slice(&out[..nl]).unwrap();
        assert_eq!(head, json!({"id": 7, "ok": {"status": 0}, "bytes": 3}));
        assert_eq!(&out[nl + 1..], b"\xffok");
        let plain = encode(9, &Ok(Answer::done()));
        let v: Value = serde_json::from_slice(&plain[..plain.len() - 1]).unwrap();
        assert_eq!(v, json!({"id": 9, "ok": null}));
    }

    #[test]
    fn errors_carry_their_kind_and_text() {
        let e = CallError::NoVlan {
            vlan: 3,
            known: vec![1, 2],
        };
        let out = encode(8, &Err(e));
        let v: Value = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
        assert_eq!(
            v,
            json!({"id": 8, "err": {"kind": "usage", "message": "there is no VLAN 3; VLANs are: [1, 2]"}})
        );
    }

    #[test]
    fn a_machine_error_keeps_its_kind_and_its_cause() {
        // A pattern a script could send: one the regex crate refuses.
        let pattern = String::from("(");
        let source = regex::Regex::new(&pattern).unwrap_err();
        let e = CallError::Machine(MachineError::BadRegex {
            name: "m".into(),
            regex: pattern,
            source: source.clone(),
        });
        assert_eq!(e.kind(), ErrorKind::Usage);
        // The cause is in the text once, and reachable as the source.
        let text = e.to_string();
        assert!(text.starts_with("machine m: wait_for_console_text: bad regex \"(\": "));
        assert_eq!(text.matches(&source.to_string()).count(), 1, "{text}");
        // `CallError::Machine` is transparent: its source is the machine's.
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause, Some(source.to_string()));
    }

    #[test]
    fn a_hopeless_wait_is_an_assertion_with_nixpkgs_message() {
        let e = CallError::Machine(MachineError::Hopeless {
            name: "m".into(),
            message: "unit \"x\" reached state \"failed\"".into(),
        });
        assert_eq!(e.kind(), ErrorKind::Assertion);
        assert_eq!(e.to_string(), "unit \"x\" reached state \"failed\"");
    }

    #[test]
    fn every_kind_is_one_the_client_maps() {
        let client = include_str!("../../python/nix_vmtest/errors.py");
        let table = &client[client.find("ERROR_KINDS").unwrap()..];
        for kind in [
            ErrorKind::Assertion,
            ErrorKind::Timeout,
            ErrorKind::Machine,
            ErrorKind::Usage,
            ErrorKind::Unsupported,
            ErrorKind::Cancelled,
        ] {
            let name = serde_json::to_value(kind).unwrap();
            let name = name.as_str().unwrap();
            assert!(table.contains(&format!("\"{name}\":")), "{name}");
        }
    }
}
