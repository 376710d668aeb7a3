//! The test script's side of a run (docs/contracts.md, Contract 3): the
//! Python process that runs it ([`python`]), the JSON-lines protocol it
//! speaks ([`request`], [`reply`]), and the server that answers it one
//! request at a time ([`serve`], [`ops`]). A `cancel` request for the
//! request in progress (Ctrl-C in the REPL) abandons it.
//!
//! The server reaches the run only through [`Host`], which the driver
//! implements.

pub mod early;
pub mod ops;
pub mod probe;
pub mod python;
pub mod reply;
pub mod request;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::log::Log;
use crate::machine::Machine;
use crate::vlan::Vlan;

pub use early::early_starts;
pub use probe::WaitOp;
pub use reply::{Answer, CallError, ErrorKind};
pub use request::{Call, GlobalOp, MachineOp, Request, VlanOp, VlanRequest, Wait};

/// What serving a script needs of the run.
pub trait Host {
    /// Why `create_machine` was refused.
    type CreateError: std::error::Error + Send + Sync + 'static;

    /// The run's log.
    fn log(&self) -> &Log;
    /// Where screenshots and copied files go (`hello`).
    fn out_dir(&self) -> &Path;
    /// Whether a person drives the script at the REPL (`hello`).
    fn interactive(&self) -> bool;
    /// The machines.
    fn machines(&self) -> &[Machine];
    /// The machines, to drive them.
    fn machines_mut(&mut self) -> &mut [Machine];
    /// The VLAN switches, by number.
    fn vlans(&self) -> &BTreeMap<u32, Vlan>;
    /// Sets the links of machine `index` on every VLAN up or down.
    fn set_links(&self, index: usize, up: bool);
    /// Adds a machine started by `start_command`; returns its name.
    fn create_machine(
        &mut self,
        start_command: &str,
        name: Option<&str>,
        keep_state: bool,
    ) -> Result<String, Self::CreateError>;
}

/// A line from the script that is no request: it has no id to answer under.
#[derive(Debug, thiserror::Error)]
#[error("{source}: {line}")]
struct NotARequest {
    line: String,
    source: serde_json::Error,
}

/// Serves the script until it closes its end.
pub async fn serve<H: Host>(host: &mut H, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Call, NotARequest>>();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let call = Call::parse(&line).map_err(|source| NotARequest { line, source });
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
                    host.log()
                        .info(&format!("script protocol: ignoring a bad request: {bad}"));
                    continue;
                }
                None => break,
            },
        };
        let result = match call.request {
            // Nothing is running: the call it meant has already answered.
            Ok(Request::Cancel) => continue,
            Err(e) => Err(e),
            Ok(request) => {
                let work = ops::run(host, request);
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        // An op that is done answers, though a cancel came.
                        biased;
                        r = &mut work => break r,
                        next = rx.recv() => match next {
                            Some(Ok(c)) if c.is_cancel() => {
                                break Err(CallError::Interrupted { op: call.op.clone() });
                            }
                            Some(Ok(c)) => queued.push_back(c),
                            Some(Err(_)) => {}
                            None => break Err(CallError::ScriptGone),
                        }
                    }
                }
            }
        };
        if call.noreply {
            if let Err(e) = result {
                host.log()
                    .info(&format!("script protocol: `{}` failed: {e}", call.op));
            }
            continue;
        }
        if write
            .write_all(&reply::encode(call.id, &result))
            .await
            .is_err()
        {
            break;
        }
    }
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::path::PathBuf;
    use tokio::io::AsyncReadExt;

    /// A run without machines or VLANs.
    struct Empty {
        log: Log,
        out_dir: PathBuf,
        vlans: BTreeMap<u32, Vlan>,
        created: Vec<String>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("create_machine: no machines here")]
    struct Refused;

    impl Host for Empty {
        type CreateError = Refused;
        fn log(&self) -> &Log {
            &self.log
        }
        fn out_dir(&self) -> &Path {
            &self.out_dir
        }
        fn interactive(&self) -> bool {
            false
        }
        fn machines(&self) -> &[Machine] {
            &[]
        }
        fn machines_mut(&mut self) -> &mut [Machine] {
            &mut []
        }
        fn vlans(&self) -> &BTreeMap<u32, Vlan> {
            &self.vlans
        }
        fn set_links(&self, _index: usize, _up: bool) {}
        fn create_machine(
            &mut self,
            start_command: &str,
            _name: Option<&str>,
            _keep_state: bool,
        ) -> Result<String, Refused> {
            self.created.push(start_command.to_string());
            Err(Refused)
        }
    }

    /// Sends `requests` (one line each) to a run without machines or
    /// VLANs, closes, and returns the replies.
    async fn exchange(requests: &[Value]) -> Vec<Value> {
        let mut host = Empty {
            log: Log::quiet(),
            out_dir: PathBuf::from("/out"),
            vlans: BTreeMap::new(),
            created: Vec::new(),
        };
        exchange_with(&mut host, requests).await
    }

    async fn exchange_with(host: &mut Empty, requests: &[Value]) -> Vec<Value> {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut text = String::new();
        for r in requests {
            text += &format!("{r}\n");
        }
        theirs.write_all(text.as_bytes()).await.unwrap();
        theirs.shutdown().await.unwrap();
        serve(host, ours).await;
        let mut out = String::new();
        theirs.read_to_string(&mut out).await.unwrap();
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn requests_are_answered_in_order_and_noreply_ones_not_at_all() {
        let replies = exchange(&[
            json!({"id": 1, "op": "hello", "machine": null, "args": {}}),
            json!({"id": 2, "op": "log", "machine": null, "args": {"message": "hi"}, "noreply": true}),
            json!({"id": 3, "op": "log", "machine": null, "args": {}, "noreply": true}),
            "not a request".into(),
            json!({"id": 4, "op": "execute", "machine": "nobody", "args": {"command": "true"}}),
            json!({"id": 5, "op": "execute", "machine": "nobody", "args": {}}),
            json!({"id": 6, "op": "vlan", "machine": null, "args": {"vlan": 1, "action": "stats"}}),
            json!({"id": 7, "op": "create_machine", "machine": null, "args": {"start_command": "run-x-vm"}}),
            json!({"id": 8, "op": "cancel", "machine": null, "args": {"id": 7}}),
            json!({"id": 9, "op": "join_all", "machine": null, "args": {}}),
        ])
        .await;
        let ids: Vec<_> = replies.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [1, 4, 5, 6, 7, 9]);
        assert_eq!(
            replies[0]["ok"],
            json!({"machines": [], "vlans": [], "out_dir": "/out", "interactive": false})
        );
        let err = |i: usize| {
            (
                replies[i]["err"]["kind"].clone(),
                replies[i]["err"]["message"].clone(),
            )
        };
        assert_eq!(
            err(1),
            (
                json!("usage"),
                json!("no machine named \"nobody\"; machines are: ")
            )
        );
        assert_eq!(
            err(2),
            (json!("usage"), json!("execute: missing field `command`"))
        );
        assert_eq!(
            err(3),
            (json!("usage"), json!("there is no VLAN 1; VLANs are: []"))
        );
        assert_eq!(
            err(4),
            (json!("usage"), json!("create_machine: no machines here"))
        );
        assert_eq!(replies[5]["ok"], Value::Null);
    }

    #[tokio::test]
    async fn vlan_requests_reach_the_switch_and_stats_are_json() {
        let dir = tempfile::tempdir().unwrap();
        let vlan = Vlan::start(1, dir.path().join("vlan1.sock")).await.unwrap();
        let mut host = Empty {
            log: Log::quiet(),
            out_dir: PathBuf::from("/out"),
            vlans: BTreeMap::from([(1, vlan)]),
            created: Vec::new(),
        };
        let vlan =
            |id: u64, args: Value| json!({"id": id, "op": "vlan", "machine": null, "args": args});
        let replies = exchange_with(
            &mut host,
            &[
                vlan(1, json!({"vlan": 1, "action": "heal"})),
                vlan(2, json!({"vlan": 1, "action": "loss", "fraction": 0.5})),
                vlan(3, json!({"vlan": 1, "action": "block", "machine": "ghost"})),
                vlan(4, json!({"vlan": 1, "action": "stats"})),
            ],
        )
        .await;
        assert_eq!(replies[0]["ok"], Value::Null);
        assert_eq!(replies[1]["ok"], Value::Null);
        assert_eq!(
            replies[2]["err"],
            json!({"kind": "usage", "message": "vlan1: no machine named \"ghost\"; machines are: "})
        );
        let stats = &replies[3]["ok"];
        assert_eq!(stats["ports"], 0);
        assert_eq!(stats["frames_received"], 0);
        assert_eq!(stats["dropped"]["loss"], 0);
    }
}
