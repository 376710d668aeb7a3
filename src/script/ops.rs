//! Every operation the Python client can ask for, mapped onto the driver and
//! its machines. Argument names are the Python keyword arguments.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::{Answer, Call, CallError};
use crate::driver::Driver;
use crate::machine::shell::{shell_quote, UntilMode};
use crate::machine::{Machine, MachineError};
use crate::spec::mac_address;

impl From<MachineError> for CallError {
    fn from(e: MachineError) -> Self {
        let kind = match &e {
            MachineError::Timeout { .. } => "timeout",
            MachineError::Usage { .. } => "usage",
            MachineError::Cancelled { .. } => "cancelled",
            _ => "machine",
        };
        CallError {
            kind,
            message: e.to_string(),
        }
    }
}

fn str_arg<'a>(args: &'a Value, key: &str, op: &str) -> Result<&'a str, CallError> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| CallError::usage(format!("{op}: argument `{key}` must be a string")))
}

fn opt_str<'a>(args: &'a Value, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

fn bool_arg(args: &Value, key: &str, default: bool) -> bool {
    args.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// A timeout in seconds; `null` or absent means `default`.
fn timeout_arg(
    args: &Value,
    key: &str,
    default: Option<f64>,
) -> Result<Option<Duration>, CallError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(default.map(Duration::from_secs_f64)),
        Some(v) => match v.as_f64() {
            Some(s) if s >= 0.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err(CallError::usage(format!(
                "`{key}` must be a non-negative number of seconds, got {v}"
            ))),
        },
    }
}

fn machine_mut<'a>(driver: &'a mut Driver, call: &Call) -> Result<&'a mut Machine, CallError> {
    let name = call
        .machine
        .as_deref()
        .ok_or_else(|| CallError::usage(format!("{} needs a machine", call.op)))?;
    let i = driver.machine_index(name).ok_or_else(|| {
        CallError::usage(format!(
            "no machine named {name:?}; machines are: {}",
            driver
                .machines
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    Ok(&mut driver.machines[i])
}

/// Runs one call.
pub async fn dispatch(driver: &mut Driver, call: &Call) -> Result<Answer, CallError> {
    match call.machine {
        None => global(driver, call).await,
        Some(_) => machine_op(driver, call).await,
    }
}

async fn global(driver: &mut Driver, call: &Call) -> Result<Answer, CallError> {
    let a = &call.args;
    let log = driver.log.clone();
    match call.op.as_str() {
        "hello" => {
            let machines: Vec<Value> = driver
                .machines
                .iter()
                .map(|m| json!({ "name": m.name, "vlans": m.config().spec.vlans() }))
                .collect();
            Ok(json!({
                "machines": machines,
                "vlans": driver.vlans.keys().collect::<Vec<_>>(),
                "out_dir": driver.opts.out_dir,
                "interactive": driver.opts.interactive,
            })
            .into())
        }
        "log" => {
            log.info(str_arg(a, "message", "log")?);
            Ok(Value::Null.into())
        }
        "stdout" => {
            log.stdout(str_arg(a, "text", "stdout")?.as_bytes());
            Ok(Value::Null.into())
        }
        "log_begin" => {
            log.begin(str_arg(a, "message", "log_begin")?);
            Ok(Value::Null.into())
        }
        "log_end" => {
            log.end(None);
            Ok(Value::Null.into())
        }
        "subtest_begin" => {
            log.begin_subtest(str_arg(a, "name", "subtest_begin")?);
            Ok(Value::Null.into())
        }
        "subtest_end" => {
            log.end(opt_str(a, "error"));
            Ok(Value::Null.into())
        }
        "serial_stdout" => {
            log.set_serial_stdout(bool_arg(a, "on", true));
            Ok(Value::Null.into())
        }
        "create_machine" => {
            let cmd = str_arg(a, "start_command", "create_machine")?;
            let name = driver
                .create_machine(
                    cmd,
                    opt_str(a, "name"),
                    bool_arg(a, "keep_machine_state", false),
                )
                .map_err(CallError::usage)?;
            Ok(json!({ "name": name }).into())
        }
        "join_all" => {
            for m in &mut driver.machines {
                m.wait_for_shutdown().await?;
            }
            Ok(Value::Null.into())
        }
        "vlan" => vlan_op(driver, a),
        op => Err(CallError::usage(format!("unknown operation {op:?}"))),
    }
}

fn mac_of(driver: &Driver, vlan: u32, machine: &str) -> Result<[u8; 6], CallError> {
    let i = driver
        .machine_index(machine)
        .ok_or_else(|| CallError::usage(format!("vlan{vlan}: no machine named {machine:?}")))?;
    Ok(mac_address(vlan, driver.machines[i].config().node))
}

fn vlan_op(driver: &mut Driver, a: &Value) -> Result<Answer, CallError> {
    let v = a
        .get("vlan")
        .and_then(Value::as_u64)
        .ok_or_else(|| CallError::usage("vlan: argument `vlan` must be a VLAN number"))?
        as u32;
    let action = str_arg(a, "action", "vlan")?;
    let vlan = driver.vlans.get(&v).ok_or_else(|| {
        CallError::usage(format!(
            "there is no VLAN {v}; VLANs are: {:?}",
            driver.vlans.keys().collect::<Vec<_>>()
        ))
    })?;
    let machine_mac = |key: &str| -> Result<Option<[u8; 6]>, CallError> {
        match opt_str(a, key) {
            Some(m) => mac_of(driver, v, m).map(Some),
            None => Ok(None),
        }
    };
    let what = match action {
        "block" | "unblock" => {
            let mac = machine_mac("machine")?
                .ok_or_else(|| CallError::usage(format!("vlan{v}.{action} needs a machine")))?;
            vlan.set_link(mac, action == "unblock");
            format!("{action} {}", opt_str(a, "machine").unwrap_or(""))
        }
        "partition" => {
            let groups = a
                .get("groups")
                .and_then(Value::as_array)
                .ok_or_else(|| CallError::usage("partition needs groups of machine names"))?;
            let mut macs = Vec::new();
            let mut names = Vec::new();
            for g in groups {
                let members = g
                    .as_array()
                    .ok_or_else(|| CallError::usage("each partition group must be a list of machines"))?;
                let mut group = Vec::new();
                let mut gnames = Vec::new();
                for m in members {
                    let name = m.as_str().ok_or_else(|| {
                        CallError::usage("partition groups hold machines (or their names)")
                    })?;
                    group.push(mac_of(driver, v, name)?);
                    gnames.push(name.to_string());
                }
                macs.push(group);
                names.push(format!("[{}]", gnames.join(", ")));
            }
            vlan.partition(macs);
            format!("partitioned into {}", names.join(" | "))
        }
        "heal" => {
            vlan.heal();
            "healed".to_string()
        }
        "loss" => {
            let f = a
                .get("fraction")
                .and_then(Value::as_f64)
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| CallError::usage("loss: `fraction` must be between 0.0 and 1.0"))?;
            vlan.set_loss(machine_mac("machine")?, f);
            format!("loss {f}")
        }
        "delay" => {
            let d = timeout_arg(a, "seconds", None)?
                .ok_or_else(|| CallError::usage("delay: `seconds` is required"))?;
            vlan.set_delay(machine_mac("machine")?, d);
            format!("delay {d:?}")
        }
        "stats" => {
            let s = vlan.stats();
            return Ok(json!({
                "ports": vlan.ports(),
                "stats": format!("{s:?}"),
            })
            .into());
        }
        other => {
            return Err(CallError::usage(format!(
                "unknown vlan action {other:?}: use block, unblock, partition, heal, loss, delay, stats"
            )))
        }
    };
    driver.log.info(&format!("vlan{v}: {what}"));
    Ok(Value::Null.into())
}

async fn machine_op(driver: &mut Driver, call: &Call) -> Result<Answer, CallError> {
    let a = &call.args;
    let op = call.op.as_str();
    if op == "block" || op == "unblock" {
        let name = call.machine.as_deref().unwrap_or("");
        let i = driver
            .machine_index(name)
            .ok_or_else(|| CallError::usage(format!("no machine named {name:?}")))?;
        driver.set_links(i, op == "unblock");
        return Ok(Value::Null.into());
    }
    let m = machine_mut(driver, call)?;
    let unit = || -> Answer { Value::Null.into() };
    match op {
        "start" => {
            m.start(bool_arg(a, "allow_reboot", false)).await?;
            Ok(unit())
        }
        "connect" => {
            m.connect().await?;
            Ok(unit())
        }
        "is_up" => Ok(json!(m.is_up()).into()),
        "status" => Ok(json!({
            "booted": m.is_running(),
            "connected": m.is_up(),
            "pid": m.qemu_pid(),
            "state_dir": m.state_dir().display().to_string(),
            "shared_dir": m.shared_dir().display().to_string(),
            "tmp_dir": m.tmp_dir().display().to_string(),
        })
        .into()),
        "disconnect" => {
            m.disconnect();
            Ok(unit())
        }
        "set_state_dir" => {
            m.set_state_dir(PathBuf::from(str_arg(a, "path", op)?))?;
            Ok(unit())
        }
        "execute" => {
            let command = user_command(str_arg(a, "command", op)?);
            let command = command.as_str();
            let timeout = timeout_arg(a, "timeout", None)?;
            let out = m
                .execute(command, timeout, bool_arg(a, "check_output", true))
                .await?;
            Ok(Answer {
                value: json!({ "status": out.status, "timed_out": out.ending == crate::machine::shell::Ending::Timeout }),
                bytes: Some(out.output),
            })
        }
        "wait_until" => {
            let written = str_arg(a, "command", op)?;
            let command = user_command(written);
            let command = command.as_str();
            let want = bool_arg(a, "want_success", true);
            let mode = if want {
                UntilMode::Succeed
            } else {
                UntilMode::Fail
            };
            // Messages name the command as the script wrote it.
            let what = format!("`{written}` to {}", if want { "succeed" } else { "fail" });
            let out = m
                .wait_until(
                    &what,
                    command,
                    mode,
                    timeout_arg(a, "timeout", Some(900.0))?,
                )
                .await?;
            Ok(Answer {
                value: json!({ "status": out.status }),
                bytes: Some(out.output),
            })
        }
        "wait_for_file" => {
            let path = str_arg(a, "path", op)?;
            m.wait_until(
                &format!("file {path}"),
                &format!("test -e {}", shell_quote(path)),
                UntilMode::Succeed,
                timeout_arg(a, "timeout", Some(900.0))?,
            )
            .await?;
            Ok(unit())
        }
        "wait_for_open_port" | "wait_for_closed_port" => {
            let port = a
                .get("port")
                .and_then(Value::as_u64)
                .filter(|p| *p > 0 && *p < 65536)
                .ok_or_else(|| CallError::usage(format!("{op}: `port` must be 1..65535")))?;
            let addr = opt_str(a, "addr").unwrap_or("localhost");
            let open = op == "wait_for_open_port";
            m.wait_until(
                &format!(
                    "port {port} on {addr} to be {}",
                    if open { "open" } else { "closed" }
                ),
                &port_probe(addr, port),
                if open {
                    UntilMode::Succeed
                } else {
                    UntilMode::Fail
                },
                timeout_arg(a, "timeout", Some(900.0))?,
            )
            .await?;
            Ok(unit())
        }
        "wait_for_open_unix_socket" => {
            let addr = str_arg(a, "addr", op)?;
            let dgram = if bool_arg(a, "is_datagram", false) {
                "u"
            } else {
                ""
            };
            m.wait_until(
                &format!("unix socket {addr} to accept connections"),
                &format!("nc -{dgram}z -U {}", shell_quote(addr)),
                UntilMode::Succeed,
                timeout_arg(a, "timeout", Some(900.0))?,
            )
            .await?;
            Ok(unit())
        }
        "wait_for_unit" => {
            let unit_name = str_arg(a, "unit", op)?;
            m.wait_for_unit(
                unit_name,
                opt_str(a, "user"),
                timeout_arg(a, "timeout", Some(900.0))?,
            )
            .await?;
            Ok(unit())
        }
        "get_unit_info" => {
            let info = m
                .get_unit_info(str_arg(a, "unit", op)?, opt_str(a, "user"))
                .await?;
            Ok(json!(info).into())
        }
        "wait_for_console_text" => {
            let line = m
                .wait_for_console_text(str_arg(a, "regex", op)?, timeout_arg(a, "timeout", None)?)
                .await?;
            Ok(json!(line).into())
        }
        "get_console_log" => Ok(json!(m.console().all()).into()),
        "shutdown" => {
            m.shutdown().await?;
            Ok(unit())
        }
        "crash" => {
            m.crash().await?;
            Ok(unit())
        }
        "reboot" => {
            m.reboot().await?;
            Ok(unit())
        }
        "wait_for_shutdown" => {
            m.wait_for_shutdown().await?;
            Ok(unit())
        }
        "release" => {
            m.release();
            Ok(unit())
        }
        "send_monitor_command" => {
            let out = m.send_monitor_command(str_arg(a, "command", op)?).await?;
            Ok(json!(out).into())
        }
        "qmp" => {
            let out = m
                .qmp_execute(
                    str_arg(a, "execute", op)?,
                    a.get("arguments").cloned().filter(|v| !v.is_null()),
                )
                .await?;
            Ok(out.into())
        }
        "next_qmp_event" => {
            let t = timeout_arg(a, "timeout", Some(600.0))?.unwrap_or(Duration::from_secs(600));
            Ok(m.next_qmp_event(t).await?.into())
        }
        "send_console" => {
            m.send_console(str_arg(a, "chars", op)?).await?;
            Ok(unit())
        }
        "screenshot" => {
            let p = m.screenshot(str_arg(a, "filename", op)?).await?;
            Ok(json!(p).into())
        }
        "copy_from_host" => {
            m.copy_from_host(
                Path::new(str_arg(a, "source", op)?),
                str_arg(a, "target", op)?,
            )
            .await?;
            Ok(unit())
        }
        "copy_from_machine" => {
            let p = m
                .copy_from_machine(
                    str_arg(a, "source", op)?,
                    opt_str(a, "target_dir").unwrap_or(""),
                )
                .await?;
            Ok(json!(p).into())
        }
        "console_interact" => {
            m.console_interact().await?;
            Ok(unit())
        }
        "shell_interact" => {
            m.shell_interact().await?;
            Ok(unit())
        }
        other => Err(CallError::usage(format!(
            "unknown machine operation {other:?}"
        ))),
    }
}

// A test author's command, run as nixpkgs runs it: `set -euo pipefail` first.
pub use crate::machine::user_command;

/// A guest command that succeeds when `addr:port` accepts TCP connections.
/// Local addresses use bash's `/dev/tcp` (no process started); others are
/// bounded to 2 s a try so an unreachable host cannot stall the wait.
pub fn port_probe(addr: &str, port: u64) -> String {
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

    #[test]
    fn timeouts_are_checked_and_default() {
        let a = json!({"timeout": 1.5, "bad": -1});
        assert_eq!(
            timeout_arg(&a, "timeout", None).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            timeout_arg(&a, "none", Some(900.0)).unwrap(),
            Some(Duration::from_secs(900))
        );
        assert!(timeout_arg(&a, "bad", None).is_err());
    }

    #[test]
    fn port_probes_do_not_fork_for_localhost() {
        assert_eq!(
            port_probe("localhost", 80),
            "exec 3<>'/dev/tcp/localhost/80'"
        );
        assert!(port_probe("server", 80).starts_with("timeout 2 bash -c"));
    }
}
