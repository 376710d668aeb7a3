//! Runs each request of the script against the run ([`Host`]): the log, the
//! VLANs, and the machines.

use serde_json::{json, Value};

use super::reply::{Answer, CallError};
use super::request::{GlobalOp, MachineOp, Request, VlanOp, VlanRequest};
use super::Host;
use crate::machine::shell::Ending;
use crate::spec::mac_address;

// A test author's command, run as nixpkgs runs it: `set -euo pipefail` first.
pub use crate::machine::user_command;

/// Runs one request.
pub async fn run<H: Host>(host: &mut H, request: Request) -> Result<Answer, CallError> {
    match request {
        Request::Cancel => Ok(Answer::done()),
        Request::Global(op) => global(host, op).await,
        Request::Machine { machine, op } => {
            let index = host
                .machines()
                .iter()
                .position(|m| m.name == machine)
                .ok_or_else(|| CallError::NoMachine {
                    name: machine,
                    known: machine_names(host),
                })?;
            on_machine(host, index, op).await
        }
    }
}

fn machine_names<H: Host>(host: &H) -> Vec<String> {
    host.machines().iter().map(|m| m.name.clone()).collect()
}

async fn global<H: Host>(host: &mut H, op: GlobalOp) -> Result<Answer, CallError> {
    let log = host.log().clone();
    match op {
        GlobalOp::Hello {} => {
            let machines: Vec<Value> = host
                .machines()
                .iter()
                .map(|m| json!({ "name": m.name, "vlans": m.config().spec.vlans() }))
                .collect();
            return Ok(json!({
                "machines": machines,
                "vlans": host.vlans().keys().collect::<Vec<_>>(),
                "out_dir": host.out_dir().display().to_string(),
                "interactive": host.interactive(),
            })
            .into());
        }
        GlobalOp::Log { message } => log.info(&message),
        GlobalOp::Stdout { text } => log.stdout(text.as_bytes()),
        GlobalOp::LogBegin { message } => log.begin(&message),
        GlobalOp::LogEnd {} => log.end(None),
        GlobalOp::SubtestBegin { name } => log.begin_subtest(&name),
        GlobalOp::SubtestEnd { error } => log.end(error.as_deref()),
        GlobalOp::SerialStdout { on } => log.set_serial_stdout(on),
        GlobalOp::CreateMachine {
            start_command,
            name,
            keep_machine_state,
        } => {
            let name = host
                .create_machine(&start_command, name.as_deref(), keep_machine_state)
                .map_err(|e| CallError::CreateMachine(Box::new(e)))?;
            return Ok(json!({ "name": name }).into());
        }
        GlobalOp::JoinAll {} => {
            for m in host.machines_mut() {
                m.wait_for_shutdown().await?;
            }
        }
        GlobalOp::Vlan(request) => return vlan(host, request),
    }
    Ok(Answer::done())
}

fn vlan<H: Host>(host: &H, request: VlanRequest) -> Result<Answer, CallError> {
    let v = request.vlan;
    let vlan = host.vlans().get(&v).ok_or_else(|| CallError::NoVlan {
        vlan: v,
        known: host.vlans().keys().copied().collect(),
    })?;
    let mac = |name: &str| -> Result<[u8; 6], CallError> {
        let m = host
            .machines()
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| CallError::NoVlanMachine {
                vlan: v,
                name: name.to_string(),
                known: machine_names(host),
            })?;
        Ok(mac_address(v, m.config().node))
    };
    let what = match request.action {
        VlanOp::Block { machine } => {
            vlan.set_link(mac(&machine)?, false);
            format!("block {machine}")
        }
        VlanOp::Unblock { machine } => {
            vlan.set_link(mac(&machine)?, true);
            format!("unblock {machine}")
        }
        VlanOp::Partition { groups } => {
            let macs = groups
                .iter()
                .map(|g| g.iter().map(|m| mac(m)).collect())
                .collect::<Result<_, _>>()?;
            vlan.partition(macs);
            let shown: Vec<String> = groups
                .iter()
                .map(|g| format!("[{}]", g.join(", ")))
                .collect();
            format!("partitioned into {}", shown.join(" | "))
        }
        VlanOp::Heal => {
            vlan.heal();
            "healed".to_string()
        }
        VlanOp::Loss { fraction, machine } => {
            vlan.set_loss(machine.as_deref().map(mac).transpose()?, fraction.0);
            format!("loss {}", fraction.0)
        }
        VlanOp::Delay { seconds, machine } => {
            vlan.set_delay(machine.as_deref().map(mac).transpose()?, seconds.0);
            format!("delay {:?}", seconds.0)
        }
        VlanOp::Stats => return Ok(json!(vlan.stats()).into()),
    };
    host.log().info(&format!("vlan{v}: {what}"));
    Ok(Answer::done())
}

async fn on_machine<H: Host>(
    host: &mut H,
    index: usize,
    op: MachineOp,
) -> Result<Answer, CallError> {
    let m = &mut host.machines_mut()[index];
    let answer = match op {
        MachineOp::Block {} => {
            host.set_links(index, false);
            Answer::done()
        }
        MachineOp::Unblock {} => {
            host.set_links(index, true);
            Answer::done()
        }
        MachineOp::Start { allow_reboot } => {
            m.start(allow_reboot).await?;
            Answer::done()
        }
        MachineOp::Connect {} => {
            m.connect().await?;
            Answer::done()
        }
        MachineOp::IsUp {} => json!(m.is_up()).into(),
        MachineOp::Status {} => json!({
            "booted": m.is_running(),
            "connected": m.is_up(),
            "pid": m.qemu_pid(),
            "state_dir": m.state_dir().display().to_string(),
            "shared_dir": m.shared_dir().display().to_string(),
            "tmp_dir": m.tmp_dir().display().to_string(),
        })
        .into(),
        MachineOp::Disconnect {} => {
            m.disconnect();
            Answer::done()
        }
        MachineOp::SetStateDir { path } => {
            m.set_state_dir(path)?;
            Answer::done()
        }
        MachineOp::Execute {
            command,
            check_output,
            timeout,
        } => {
            let out = m
                .execute(&user_command(&command), timeout.map(|t| t.0), check_output)
                .await?;
            Answer {
                value: json!({
                    "status": out.status,
                    "timed_out": out.ending == Ending::Timeout,
                }),
                bytes: Some(out.output),
            }
        }
        MachineOp::Wait(wait) => super::probe::run(m, wait).await?,
        MachineOp::GetUnitInfo { unit, user } => {
            json!(m.get_unit_info(&unit, user.as_deref()).await?).into()
        }
        MachineOp::WaitForConsoleText { regex, timeout } => json!(
            m.wait_for_console_text(&regex, timeout.map(|t| t.0))
                .await?
        )
        .into(),
        MachineOp::GetConsoleLog {} => json!(m.console().all()).into(),
        MachineOp::Shutdown {} => {
            m.shutdown().await?;
            Answer::done()
        }
        MachineOp::Crash {} => {
            m.crash().await?;
            Answer::done()
        }
        MachineOp::Reboot {} => {
            m.reboot().await?;
            Answer::done()
        }
        MachineOp::WaitForShutdown {} => {
            m.wait_for_shutdown().await?;
            Answer::done()
        }
        MachineOp::Release {} => {
            m.release();
            Answer::done()
        }
        MachineOp::SendMonitorCommand { command } => {
            json!(m.send_monitor_command(&command).await?).into()
        }
        MachineOp::Qmp { execute, arguments } => m.qmp_execute(&execute, arguments).await?.into(),
        MachineOp::NextQmpEvent { timeout } => m.next_qmp_event(timeout.0).await?.into(),
        MachineOp::SendConsole { chars } => {
            m.send_console(&chars).await?;
            Answer::done()
        }
        MachineOp::Screenshot { filename } => json!(m.screenshot(&filename).await?).into(),
        MachineOp::CopyFromHost { source, target } => {
            m.copy_from_host(&source, &target).await?;
            Answer::done()
        }
        MachineOp::CopyFromMachine { source, target_dir } => {
            json!(m.copy_from_machine(&source, &target_dir).await?).into()
        }
        MachineOp::ConsoleInteract {} => {
            m.console_interact().await?;
            Answer::done()
        }
        MachineOp::ShellInteract {} => {
            m.shell_interact().await?;
            Answer::done()
        }
    };
    Ok(answer)
}
