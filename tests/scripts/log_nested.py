# nodes: machine=tiny
# expect: pass
# expect-log: outer block
# expect-log: a message inside the inner block
# expect-log: (finished: inner block, in
# expect-log: (finished: outer block, in
# expect-log: machine: a machine-attributed message
# log.nested blocks are timed and closed even on exceptions; log.info and
# friends write plain lines.
start_all()
with log.nested("outer block"):
    machine.succeed("true")
    with log.nested("inner block"):
        log.info("a message inside the inner block")
log.info("a machine-attributed message", {"machine": "machine"})
log.warning("a warning")
log.error("an error line (not a failure)")
try:
    with log.nested("block that raises"):
        raise KeyError("inside")
except KeyError:
    pass
machine.log("machine.log works too")
