# nodes: machine=tiny
# expect: pass
# screenshot(name) writes <out>/<name>.png; a name with a `/` is a path.
import tempfile

start_all()
machine.wait_until_succeeds("true")

machine.screenshot("first")
png = os.path.join(driver.out_dir, "first.png")
t.assertTrue(os.path.isfile(png), os.listdir(driver.out_dir))
with open(png, "rb") as f:
    t.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
t.assertGreater(os.path.getsize(png), 100)

machine.screenshot("second.png")
t.assertTrue(os.path.isfile(os.path.join(driver.out_dir, "second.png")), os.listdir(driver.out_dir))

elsewhere = os.path.join(tempfile.mkdtemp(prefix="shot-"), "third.png")
machine.screenshot(elsewhere)
t.assertTrue(os.path.isfile(elsewhere))
