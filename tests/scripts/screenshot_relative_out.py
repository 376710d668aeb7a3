# nodes: machine=tiny
# expect: pass
# outdir: relative
# The driver run with a relative output directory (`-o out`, as a person
# types it): screenshots and copies still land in it.
start_all()
machine.wait_until_succeeds("true")
machine.screenshot("relative")
t.assertTrue(os.path.isfile(os.path.join(driver.out_dir, "relative.png")), os.listdir(driver.out_dir))
machine.succeed("echo x > /tmp/copied")
machine.copy_from_machine("/tmp/copied")
t.assertTrue(os.path.isfile(os.path.join(driver.out_dir, "copied")))
