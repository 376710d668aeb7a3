# nodes: machine=tiny
# expect: pass
# OCR (tesseract) on the VGA text console: get_screen_text, wait_for_text.
start_all()
machine.wait_until_succeeds("true")
machine.succeed("clear > /dev/tty1 2>/dev/null || true")
machine.succeed("for i in $(seq 1 30); do echo; done > /dev/tty1; echo HELLO OCR WORLD > /dev/tty1")
text = machine.get_screen_text()
log.info(f"OCR: {text!r}")
t.assertIn("HELLO", text)
variants = machine.get_screen_text_variants()
t.assertTrue(any("OCR" in v for v in variants), variants)

machine.succeed("(sleep 2; echo LATER TEXT > /dev/tty1) >/dev/null 2>&1 &")
machine.wait_for_text("LATER", timeout=120)

# The same text through the guest's /dev/vcs (no OCR): get_tty_text,
# wait_until_tty_matches.
t.assertIn("HELLO OCR WORLD", machine.get_tty_text("1"))
machine.wait_until_tty_matches("1", "LATER TEXT", timeout=60)
