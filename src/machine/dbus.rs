//! Just enough of the D-Bus wire protocol to ask systemd about one unit
//! and to hear its change signals: method calls with string arguments go
//! out; replies, errors and signals come in (headers parsed, bodies read
//! only as far as a string, a variant holding a string, or an array's
//! length).
//!
//! Used by `wait_for_unit`: the guest runs `systemd-stdio-bridge` on its
//! backdoor console, connected to systemd's private socket, and the driver
//! speaks D-Bus through it. systemd sends every unit change to every
//! private connection, so the wait reacts to the change itself instead of
//! running `systemctl` again and again (see `Shell::unit_wait`).
//!
//! Little-endian only (we choose it for what we send; systemd answers in
//! the endianness of its own host, which is little-endian on every
//! architecture QEMU runs NixOS tests for, and anything else is refused
//! with a clear error).

/// The message types of the D-Bus protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MethodCall,
    Reply,
    Error,
    Signal,
}

/// One received message: the header fields we use and the raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub serial: u32,
    pub reply_serial: Option<u32>,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub signature: String,
    pub body: Vec<u8>,
}

/// A message that breaks the protocol (or that this module does not read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed D-Bus message from the guest: {0}")]
pub struct Malformed(pub String);

fn bad(what: &str) -> Malformed {
    Malformed(what.to_string())
}

const HEADER_PATH: u8 = 1;
const HEADER_INTERFACE: u8 = 2;
const HEADER_MEMBER: u8 = 3;
const HEADER_ERROR_NAME: u8 = 4;
const HEADER_REPLY_SERIAL: u8 = 5;
const HEADER_SIGNATURE: u8 = 8;

/// The bytes that make an sd-bus peer drop the connection at once: an
/// unknown byte order. Between messages sd-bus reads exactly 24 bytes (the
/// 16-byte fixed header and the first header field's start) before it
/// judges a message, so nothing sent after this is consumed.
pub const HANG_UP: &[u8; 24] = b"X nix-vmtest: hang up!!\n";

fn pad(buf: &mut Vec<u8>, align: usize) {
    while buf.len() % align != 0 {
        buf.push(0);
    }
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    pad(buf, 4);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// A string or object path: length, bytes, NUL.
fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_u32(buf, s.len() as u32);
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

/// A signature: one length byte, bytes, NUL.
fn put_sig(buf: &mut Vec<u8>, s: &str) {
    buf.push(s.len() as u8);
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

/// One header field: a struct of a code byte and a variant.
fn put_field(buf: &mut Vec<u8>, code: u8, sig: &str, value: &str) {
    pad(buf, 8);
    buf.push(code);
    put_sig(buf, sig);
    if sig == "g" {
        put_sig(buf, value);
    } else {
        put_str(buf, value);
    }
}

/// A method call whose arguments are all strings (signature `s…`).
pub fn method_call(
    serial: u32,
    path: &str,
    interface: &str,
    member: &str,
    args: &[&str],
) -> Vec<u8> {
    let mut body = Vec::new();
    for a in args {
        put_str(&mut body, a);
    }
    let mut fields = Vec::new();
    put_field(&mut fields, HEADER_PATH, "o", path);
    put_field(&mut fields, HEADER_INTERFACE, "s", interface);
    put_field(&mut fields, HEADER_MEMBER, "s", member);
    if !args.is_empty() {
        put_field(&mut fields, HEADER_SIGNATURE, "g", &"s".repeat(args.len()));
    }
    let mut msg = vec![b'l', 1, 0, 1];
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(&serial.to_le_bytes());
    msg.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    // The fields array starts at offset 16, which is 8-aligned, so the
    // padding computed inside `fields` is the padding of the message.
    msg.extend_from_slice(&fields);
    pad(&mut msg, 8);
    msg.extend_from_slice(&body);
    msg
}

/// Reads little-endian values out of a message, alignment relative to its
/// start.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn align(&mut self, n: usize) -> Result<(), Malformed> {
        self.pos = self.pos.div_ceil(n) * n;
        if self.pos > self.buf.len() {
            return Err(bad("truncated"));
        }
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| bad("length overflow"))?;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| bad("truncated"))?;
        self.pos = end;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        self.align(4)?;
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn text(&mut self, len: usize) -> Result<String, Malformed> {
        let b = self.bytes(len)?;
        let s = String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8"))?;
        if self.u8()? != 0 {
            return Err(bad("string without its NUL"));
        }
        Ok(s)
    }

    /// A string or object path.
    fn string(&mut self) -> Result<String, Malformed> {
        let len = self.u32()? as usize;
        self.text(len)
    }

    fn signature(&mut self) -> Result<String, Malformed> {
        let len = self.u8()? as usize;
        self.text(len)
    }
}

/// How many bytes a complete message at the start of `buf` takes, once
/// its fixed header has arrived (`None` before that).
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    if buf.len() < 16 {
        return Ok(None);
    }
    if buf[0] != b'l' {
        return Err(Malformed(format!(
            "byte order {:?} (only little-endian is read)",
            buf[0] as char
        )));
    }
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]) as usize;
    let fields = word(12);
    let body = word(4);
    let len = (16 + fields).div_ceil(8) * 8 + body;
    if len > 128 << 20 {
        return Err(bad("message larger than 128 MiB"));
    }
    Ok(Some(len))
}

/// Parses one complete message (`buf` holds exactly it).
pub fn parse(buf: &[u8]) -> Result<Message, Malformed> {
    let mut r = Reader { buf, pos: 0 };
    r.bytes(1)?;
    let kind = match r.u8()? {
        1 => Kind::MethodCall,
        2 => Kind::Reply,
        3 => Kind::Error,
        4 => Kind::Signal,
        k => return Err(Malformed(format!("message type {k}"))),
    };
    r.bytes(2)?;
    let body_len = r.u32()? as usize;
    let serial = r.u32()?;
    let fields_len = r.u32()? as usize;
    let fields_end = r.pos + fields_len;
    let mut m = Message {
        kind,
        serial,
        reply_serial: None,
        path: None,
        interface: None,
        member: None,
        error_name: None,
        signature: String::new(),
        body: Vec::new(),
    };
    while r.pos < fields_end {
        r.align(8)?;
        let code = r.u8()?;
        let sig = r.signature()?;
        match sig.as_str() {
            "s" | "o" => {
                let v = r.string()?;
                match code {
                    HEADER_PATH => m.path = Some(v),
                    HEADER_INTERFACE => m.interface = Some(v),
                    HEADER_MEMBER => m.member = Some(v),
                    HEADER_ERROR_NAME => m.error_name = Some(v),
                    _ => {}
                }
            }
            "g" => {
                let v = r.signature()?;
                if code == HEADER_SIGNATURE {
                    m.signature = v;
                }
            }
            "u" => {
                let v = r.u32()?;
                if code == HEADER_REPLY_SERIAL {
                    m.reply_serial = Some(v);
                }
            }
            other => return Err(Malformed(format!("header field of type {other:?}"))),
        }
    }
    r.align(8)?;
    m.body = r.bytes(body_len)?.to_vec();
    Ok(m)
}

/// The length of the first complete type in `sig`.
fn complete_type_len(sig: &[u8]) -> Result<usize, Malformed> {
    match sig.first() {
        None => Err(bad("signature ends inside a type")),
        Some(b'a') => Ok(1 + complete_type_len(&sig[1..])?),
        Some(&open @ (b'(' | b'{')) => {
            let close = if open == b'(' { b')' } else { b'}' };
            let mut i = 1;
            while sig.get(i) != Some(&close) {
                i += complete_type_len(&sig[i..])?;
            }
            Ok(i + 1)
        }
        Some(_) => Ok(1),
    }
}

/// The alignment of a value of the type starting with `code`.
fn alignment(code: u8) -> usize {
    match code {
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 1,
    }
}

impl Reader<'_> {
    /// Steps over one value of the complete type `t`.
    fn skip(&mut self, t: &[u8]) -> Result<(), Malformed> {
        let code = *t.first().ok_or_else(|| bad("empty type"))?;
        match code {
            b'y' => {
                self.bytes(1)?;
            }
            b'n' | b'q' | b'b' | b'i' | b'u' | b'h' | b'x' | b't' | b'd' => {
                let n = alignment(code);
                self.align(n)?;
                self.bytes(n)?;
            }
            b's' | b'o' => {
                self.string()?;
            }
            b'g' => {
                self.signature()?;
            }
            b'v' => {
                let inner = self.signature()?;
                if complete_type_len(inner.as_bytes())? != inner.len() {
                    return Err(bad("a variant holds more than one type"));
                }
                self.skip(inner.as_bytes())?;
            }
            b'a' => {
                // Arrays say their length: no need to read the elements.
                let len = self.u32()? as usize;
                self.align(alignment(*t.get(1).ok_or_else(|| bad("array of nothing"))?))?;
                self.bytes(len)?;
            }
            b'(' | b'{' => {
                self.align(8)?;
                let inner = &t[1..t.len() - 1];
                let mut i = 0;
                while i < inner.len() {
                    let n = complete_type_len(&inner[i..])?;
                    self.skip(&inner[i..i + n])?;
                    i += n;
                }
            }
            other => return Err(Malformed(format!("type code {:?}", other as char))),
        }
        Ok(())
    }
}

impl Message {
    /// For an `org.freedesktop.DBus.Properties.PropertiesChanged` signal
    /// about `interface`: the new value of the string property `name`, if
    /// the signal carries it.
    pub fn changed_string(&self, interface: &str, name: &str) -> Result<Option<String>, Malformed> {
        if self.member.as_deref() != Some("PropertiesChanged") || self.signature != "sa{sv}as" {
            return Ok(None);
        }
        let mut r = self.body_reader();
        if r.string()? != interface {
            return Ok(None);
        }
        let len = r.u32()? as usize;
        r.align(8)?;
        let end = r.pos + len;
        while r.pos < end {
            r.align(8)?;
            let key = r.string()?;
            let sig = r.signature()?;
            if key == name && sig == "s" {
                return Ok(Some(r.string()?));
            }
            if complete_type_len(sig.as_bytes())? != sig.len() {
                return Err(bad("a variant holds more than one type"));
            }
            r.skip(sig.as_bytes())?;
        }
        Ok(None)
    }

    fn body_reader(&self) -> Reader<'_> {
        Reader {
            buf: &self.body,
            pos: 0,
        }
    }

    /// The first argument, if it is a string or an object path.
    pub fn first_string(&self) -> Result<String, Malformed> {
        if !(self.signature.starts_with('s') || self.signature.starts_with('o')) {
            return Err(Malformed(format!(
                "expected a string, got signature {:?}",
                self.signature
            )));
        }
        self.body_reader().string()
    }

    /// The first argument, if it is a variant that holds a string (the
    /// answer of `org.freedesktop.DBus.Properties.Get`).
    pub fn variant_string(&self) -> Result<String, Malformed> {
        if !self.signature.starts_with('v') {
            return Err(Malformed(format!(
                "expected a variant, got signature {:?}",
                self.signature
            )));
        }
        let mut r = self.body_reader();
        let inner = r.signature()?;
        if inner != "s" {
            return Err(Malformed(format!(
                "expected a string in the variant, got {inner:?}"
            )));
        }
        r.string()
    }

    /// Whether the first argument, an array, is empty.
    pub fn array_is_empty(&self) -> Result<bool, Malformed> {
        if !self.signature.starts_with('a') {
            return Err(Malformed(format!(
                "expected an array, got signature {:?}",
                self.signature
            )));
        }
        Ok(self.body_reader().u32()? == 0)
    }
}

/// Messages as systemd would send them, for tests of this module and of
/// the shell's unit waits.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// Builds a reply the way a peer would: header fields of our choosing
    /// and a body given as bytes.
    pub fn reply(
        kind: u8,
        fields: &[(u8, &str, &str)],
        reply_serial: Option<u32>,
        body: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        for (code, sig, value) in fields {
            put_field(&mut f, *code, sig, value);
        }
        if let Some(s) = reply_serial {
            pad(&mut f, 8);
            f.push(HEADER_REPLY_SERIAL);
            put_sig(&mut f, "u");
            put_u32(&mut f, s);
        }
        let mut msg = vec![b'l', kind, 0, 1];
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(&9u32.to_le_bytes());
        msg.extend_from_slice(&(f.len() as u32).to_le_bytes());
        msg.extend_from_slice(&f);
        pad(&mut msg, 8);
        msg.extend_from_slice(body);
        msg
    }

    /// A `PropertiesChanged` body: the interface, a dict with the given
    /// entries (name and type; string ones hold `value`, the others are
    /// made up), and no invalidated names.
    pub fn properties_changed(interface: &str, entries: &[(&str, &str)], value: &str) -> Vec<u8> {
        let mut b = Vec::new();
        put_str(&mut b, interface);
        let len_at = b.len().div_ceil(4) * 4;
        put_u32(&mut b, 0);
        pad(&mut b, 8);
        let start = b.len();
        for (name, kind) in entries {
            pad(&mut b, 8);
            put_str(&mut b, name);
            match *kind {
                // A string property.
                "s" => {
                    put_sig(&mut b, "s");
                    put_str(&mut b, value);
                }
                // A timestamp.
                "t" => {
                    put_sig(&mut b, "t");
                    pad(&mut b, 8);
                    b.extend_from_slice(&123u64.to_le_bytes());
                }
                // The job: (uo).
                "(uo)" => {
                    put_sig(&mut b, "(uo)");
                    pad(&mut b, 8);
                    put_u32(&mut b, 0);
                    put_str(&mut b, "/");
                }
                // Conditions: a(sbbsi) with one element.
                _ => {
                    put_sig(&mut b, "a(sbbsi)");
                    let at = b.len().div_ceil(4) * 4;
                    put_u32(&mut b, 0);
                    pad(&mut b, 8);
                    let s = b.len();
                    put_str(&mut b, "ConditionPathExists");
                    put_u32(&mut b, 0);
                    put_u32(&mut b, 1);
                    put_str(&mut b, "/x");
                    put_u32(&mut b, 0);
                    let n = (b.len() - s) as u32;
                    b[at..at + 4].copy_from_slice(&n.to_le_bytes());
                }
            }
        }
        let n = (b.len() - start) as u32;
        b[len_at..len_at + 4].copy_from_slice(&n.to_le_bytes());
        put_u32(&mut b, 0); // no invalidated properties
        b
    }

    /// A reply whose body is one value of signature `sig`.
    pub fn reply_with(serial: u32, sig: &str, body: &[u8]) -> Vec<u8> {
        reply(2, &[(HEADER_SIGNATURE, "g", sig)], Some(serial), body)
    }

    /// A reply holding an object path.
    pub fn reply_path(serial: u32, path: &str) -> Vec<u8> {
        let mut b = Vec::new();
        put_str(&mut b, path);
        reply_with(serial, "o", &b)
    }

    /// A `Properties.Get` reply holding a string.
    pub fn reply_variant(serial: u32, value: &str) -> Vec<u8> {
        let mut b = Vec::new();
        put_sig(&mut b, "s");
        put_str(&mut b, value);
        reply_with(serial, "v", &b)
    }

    /// An empty `ListJobs` reply.
    pub fn reply_no_jobs(serial: u32) -> Vec<u8> {
        let mut b = Vec::new();
        put_u32(&mut b, 0);
        reply_with(serial, "a(usssoo)", &b)
    }

    /// A `PropertiesChanged` signal from `path` about the Unit interface
    /// that sets `ActiveState` to `state` among other properties.
    pub fn active_state_signal(path: &str, state: &str) -> Vec<u8> {
        let body = properties_changed(
            "org.freedesktop.systemd1.Unit",
            &[("Job", "(uo)"), ("ActiveState", "s")],
            state,
        );
        reply(
            4,
            &[
                (HEADER_PATH, "o", path),
                (HEADER_INTERFACE, "s", "org.freedesktop.DBus.Properties"),
                (HEADER_MEMBER, "s", "PropertiesChanged"),
                (HEADER_SIGNATURE, "g", "sa{sv}as"),
            ],
            None,
            &body,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn a_method_call_parses_back() {
        let m = method_call(
            7,
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "LoadUnit",
            &["nginx.service"],
        );
        assert_eq!(message_len(&m).unwrap(), Some(m.len()));
        let body = 4 + "nginx.service".len() + 1;
        assert_eq!((m.len() - body) % 8, 0, "the body starts 8-aligned");
        let p = parse(&m).unwrap();
        assert_eq!(p.kind, Kind::MethodCall);
        assert_eq!(p.serial, 7);
        assert_eq!(p.path.as_deref(), Some("/org/freedesktop/systemd1"));
        assert_eq!(
            p.interface.as_deref(),
            Some("org.freedesktop.systemd1.Manager")
        );
        assert_eq!(p.member.as_deref(), Some("LoadUnit"));
        assert_eq!(p.signature, "s");
        assert_eq!(p.first_string().unwrap(), "nginx.service");
    }

    #[test]
    fn a_call_without_arguments_has_no_signature_or_body() {
        let m = method_call(1, "/o", "i.f", "ListJobs", &[]);
        let p = parse(&m).unwrap();
        assert_eq!(p.signature, "");
        assert!(p.body.is_empty());
    }

    #[test]
    fn replies_give_their_string_variant_and_array() {
        // Get → variant "s" "active"
        let mut body = Vec::new();
        put_sig(&mut body, "s");
        put_str(&mut body, "active");
        let m = reply(2, &[(HEADER_SIGNATURE, "g", "v")], Some(3), &body);
        let p = parse(&m).unwrap();
        assert_eq!((p.kind, p.reply_serial), (Kind::Reply, Some(3)));
        assert_eq!(p.variant_string().unwrap(), "active");
        assert!(p.first_string().is_err(), "a variant is not a string");

        // ListJobs → a(usssoo), empty and not
        let mut empty = Vec::new();
        put_u32(&mut empty, 0);
        pad(&mut empty, 8);
        let p = parse(&reply(
            2,
            &[(HEADER_SIGNATURE, "g", "a(usssoo)")],
            Some(4),
            &empty,
        ))
        .unwrap();
        assert!(p.array_is_empty().unwrap());
        let mut one = Vec::new();
        put_u32(&mut one, 48);
        let p = parse(&reply(
            2,
            &[(HEADER_SIGNATURE, "g", "a(usssoo)")],
            Some(4),
            &one,
        ))
        .unwrap();
        assert!(!p.array_is_empty().unwrap());
    }

    #[test]
    fn errors_and_signals_keep_their_names() {
        let mut body = Vec::new();
        put_str(&mut body, "Unit name x is not valid.");
        let m = reply(
            3,
            &[
                (
                    HEADER_ERROR_NAME,
                    "s",
                    "org.freedesktop.DBus.Error.InvalidArgs",
                ),
                (HEADER_SIGNATURE, "g", "s"),
            ],
            Some(2),
            &body,
        );
        let p = parse(&m).unwrap();
        assert_eq!(p.kind, Kind::Error);
        assert_eq!(
            p.error_name.as_deref(),
            Some("org.freedesktop.DBus.Error.InvalidArgs")
        );
        assert_eq!(p.first_string().unwrap(), "Unit name x is not valid.");

        let m = reply(
            4,
            &[
                (
                    HEADER_PATH,
                    "o",
                    "/org/freedesktop/systemd1/unit/slow_2eservice",
                ),
                (HEADER_INTERFACE, "s", "org.freedesktop.DBus.Properties"),
                (HEADER_MEMBER, "s", "PropertiesChanged"),
            ],
            None,
            &[],
        );
        let p = parse(&m).unwrap();
        assert_eq!(p.kind, Kind::Signal);
        assert_eq!(p.member.as_deref(), Some("PropertiesChanged"));
        assert_eq!(
            p.path.as_deref(),
            Some("/org/freedesktop/systemd1/unit/slow_2eservice")
        );
    }

    #[test]
    fn a_changed_property_is_found_among_others_of_any_type() {
        let iface = "org.freedesktop.systemd1.Unit";
        let signal = |body: &[u8]| {
            parse(&reply(
                4,
                &[
                    (HEADER_MEMBER, "s", "PropertiesChanged"),
                    (HEADER_SIGNATURE, "g", "sa{sv}as"),
                ],
                None,
                body,
            ))
            .unwrap()
        };
        let m = signal(&properties_changed(
            iface,
            &[
                ("Job", "(uo)"),
                ("Conditions", "a"),
                ("ActiveEnterTimestamp", "t"),
                ("ActiveState", "s"),
            ],
            "active",
        ));
        assert_eq!(
            m.changed_string(iface, "ActiveState").unwrap().as_deref(),
            Some("active")
        );
        let m = signal(&properties_changed(
            iface,
            &[("Job", "(uo)"), ("Conditions", "a")],
            "x",
        ));
        assert_eq!(m.changed_string(iface, "ActiveState").unwrap(), None);
        let m = signal(&properties_changed(
            "org.freedesktop.systemd1.Service",
            &[("ActiveState", "s")],
            "active",
        ));
        assert_eq!(
            m.changed_string(iface, "ActiveState").unwrap(),
            None,
            "another interface"
        );
        assert_eq!(complete_type_len(b"a{sv}as").unwrap(), 5);
        assert_eq!(complete_type_len(b"(a(sbbsi)u)x").unwrap(), 11);
        assert!(complete_type_len(b"(uo").is_err());
    }

    #[test]
    fn lengths_are_known_from_the_fixed_header_and_bad_input_is_refused() {
        let m = method_call(1, "/o", "i.f", "M", &["abc"]);
        assert_eq!(message_len(&m[..15]).unwrap(), None);
        assert_eq!(message_len(&m[..16]).unwrap(), Some(m.len()));
        assert!(message_len(b"B\x01\x00\x01............").is_err());
        assert!(
            message_len(HANG_UP).is_err(),
            "the hang-up must be refused by a peer too"
        );
        assert!(parse(&m[..m.len() - 1]).is_err(), "truncated body");
        let mut wrong = m.clone();
        wrong[1] = 9;
        assert!(parse(&wrong).is_err());
    }
}
