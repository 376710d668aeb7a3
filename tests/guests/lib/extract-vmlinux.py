#!/usr/bin/env python3
"""extract-vmlinux.py BZIMAGE OUT: writes the uncompressed kernel ELF inside
an x86 bzImage. QEMU boots such an ELF directly through its PVH entry point
(CONFIG_PVH), which skips the in-guest decompression: under TCG that takes
~10 s for Debian's xz-compressed generic kernel."""
import gzip, lzma, sys, zlib

data = open(sys.argv[1], "rb").read()
candidates = [
    (b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor().decompress(b)),
    (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(31).decompress(b)),
]
for magic, decompress in candidates:
    start = data.find(magic)
    while start >= 0:
        try:
            out = decompress(data[start:])
        except Exception:
            out = b""
        if out[:4] == b"\x7fELF":
            # The PVH entry note (Xen note type 18) must be there for QEMU.
            if b"Xen\x00" not in out or len(out) < 1 << 20:
                sys.exit("extract-vmlinux: the kernel ELF has no PVH note")
            open(sys.argv[2], "wb").write(out)
            sys.exit(0)
        start = data.find(magic, start + 1)
sys.exit("extract-vmlinux: no compressed kernel ELF found in " + sys.argv[1])
