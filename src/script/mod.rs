//! The driver's side of the script protocol (ARCHITECTURE.md, contract 3):
//! JSON lines from the Python client, one request at a time, each answered
//! with one JSON line, optionally followed by raw bytes. A `cancel` request
//! for the request in progress (Ctrl-C in the REPL) abandons it.

pub mod ops;

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::driver::Driver;

/// One request from the script.
#[derive(Debug, Deserialize)]
pub struct Call {
    pub id: u64,
    pub op: String,
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub args: Value,
    /// Log lines: the script does not wait for them, so no answer is sent
    /// (a failure is logged instead).
    #[serde(default)]
    pub noreply: bool,
}

/// A successful answer: a JSON value and, for command output, raw bytes.
#[derive(Debug, Default)]
pub struct Answer {
    pub value: Value,
    pub bytes: Option<Vec<u8>>,
}

impl From<Value> for Answer {
    fn from(value: Value) -> Self {
        Answer { value, bytes: None }
    }
}

/// A failed call, as the script sees it.
#[derive(Debug, Clone)]
pub struct CallError {
    /// `assertion`, `timeout`, `machine`, `usage`, `unsupported`, `cancelled`.
    pub kind: &'static str,
    pub message: String,
}

impl CallError {
    pub fn usage(message: impl Into<String>) -> CallError {
        CallError {
            kind: "usage",
            message: message.into(),
        }
    }
}

fn encode(id: u64, result: Result<Answer, CallError>) -> Vec<u8> {
    let (mut line, bytes) = match result {
        Ok(a) => {
            let mut v = json!({ "id": id, "ok": a.value });
            if let Some(b) = &a.bytes {
                v["bytes"] = json!(b.len());
            }
            (v.to_string().into_bytes(), a.bytes)
        }
        Err(e) => (
            json!({ "id": id, "err": { "kind": e.kind, "message": e.message } })
                .to_string()
                .into_bytes(),
            None,
        ),
    };
    line.push(b'\n');
    if let Some(b) = bytes {
        line.extend_from_slice(&b);
    }
    line
}

/// Serves the script until it closes its end.
pub async fn serve(driver: &mut Driver, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Call, String>>();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let call = serde_json::from_str::<Call>(&line).map_err(|e| format!("{e}: {line}"));
            if tx.send(call).is_err() {
                break;
            }
        }
    });
    let mut queued: VecDeque<Call> = VecDeque::new();
    loop {
        let call = match queued.pop_front() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(Ok(c)) => c,
                Some(Err(bad)) => {
                    driver
                        .log
                        .info(&format!("script protocol: ignoring a bad request: {bad}"));
                    continue;
                }
                None => break,
            },
        };
        if call.op == "cancel" {
            // Nothing is running: the call it meant has already answered.
            continue;
        }
        let id = call.id;
        let result = {
            let work = ops::dispatch(driver, &call);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    r = &mut work => break r,
                    next = rx.recv() => match next {
                        Some(Ok(c)) if c.op == "cancel" => {
                            break Err(CallError { kind: "cancelled", message: format!("{} was interrupted", call.op) });
                        }
                        Some(Ok(c)) => queued.push_back(c),
                        Some(Err(_)) => {}
                        None => break Err(CallError { kind: "cancelled", message: "the script went away".into() }),
                    }
                }
            }
        };
        if call.noreply {
            if let Err(e) = result {
                driver.log.info(&format!(
                    "script protocol: `{}` failed: {}",
                    call.op, e.message
                ));
            }
            continue;
        }
        if write.write_all(&encode(id, result)).await.is_err() {
            break;
        }
    }
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_bytes_announce_their_length() {
        let a = Answer {
            value: json!({"status": 0}),
            bytes: Some(b"\xffok".to_vec()),
        };
        let out = encode(7, Ok(a));
        let nl = out.iter().position(|&b| b == b'\n').unwrap();
        let head: Value = serde_json::from_slice(&out[..nl]).unwrap();
        assert_eq!(head["bytes"], 3);
        assert_eq!(head["id"], 7);
        assert_eq!(&out[nl + 1..], b"\xffok");
        let e = encode(8, Err(CallError::usage("bad")));
        let v: Value = serde_json::from_slice(&e[..e.len() - 1]).unwrap();
        assert_eq!(v["err"]["kind"], "usage");
    }
}
