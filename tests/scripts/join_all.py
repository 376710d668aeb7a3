# nodes: a=tiny b=tiny
# expect: pass
# join_all() waits until every machine has shut down (here: powered off from
# inside, a little later each).
start_all()
a.succeed("true")
b.succeed("true")
a.execute("(sleep 2; poweroff -f) >/dev/null 2>&1 &", check_return=False)
b.execute("(sleep 4; poweroff -f) >/dev/null 2>&1 &", check_return=False)
join_all()
t.assertFalse(a.is_up())
t.assertFalse(b.is_up())
