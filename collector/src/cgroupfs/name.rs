//! Cgroup names that are not UTF-8, kept reversible.
//!
//! The kernel allows any bytes but `/` and NUL in a cgroup's name, while every layer above the
//! walk carries paths as `str` (proto strings, JSON, labels). A lossy conversion would turn the
//! name into one no `openat` can find, silently hiding the cgroup and its whole subtree from the
//! readings, and would give two different names the same path. Instead each byte that is not
//! part of valid UTF-8 becomes one code point of a private-use block (the idea of Python's
//! `surrogateescape`, with code points that Rust strings may hold), and the reader turns them
//! back into the bytes before it opens the directory.
//!
//! The block is U+10FF80..=U+10FFFF, the last 128 code points of plane 16's private use area:
//! a valid UTF-8 name that itself uses them would be misread, which no runtime or systemd does.

use std::{
    borrow::Cow,
    ffi::{OsStr, OsString},
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
};

/// The code point that stands for the undecodable byte 0x80; byte `b` maps to `BASE + b - 0x80`.
const ESCAPE_BASE: u32 = 0x10_FF80;

/// The name as a string: unchanged when it is UTF-8, otherwise every undecodable byte escaped.
pub fn to_str(name: &OsStr) -> Cow<'_, str> {
    let bytes = name.as_bytes();
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for &b in chunk.invalid() {
            out.push(escape(b));
        }
    }
    Cow::Owned(out)
}

/// The bytes a string from [`to_str`] stands for, appended to `out`.
pub fn push_bytes(text: &str, out: &mut Vec<u8>) {
    if !text.chars().any(is_escape) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let mut utf8 = [0u8; 4];
    for c in text.chars() {
        match unescape(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes()),
        }
    }
}

/// The file-system name a string from [`to_str`] stands for.
pub fn to_os_string(text: &str) -> OsString {
    let mut bytes = Vec::with_capacity(text.len());
    push_bytes(text, &mut bytes);
    OsString::from_vec(bytes)
}

fn escape(byte: u8) -> char {
    // Only bytes ≥ 0x80 can be invalid UTF-8; ASCII is always valid.
    char::from_u32(ESCAPE_BASE + u32::from(byte.saturating_sub(0x80)))
        .expect("U+10FF80..=U+10FFFF are scalar values")
}

fn is_escape(c: char) -> bool {
    u32::from(c) >= ESCAPE_BASE
}

fn unescape(c: char) -> Option<u8> {
    let offset = u32::from(c).checked_sub(ESCAPE_BASE)?;
    u8::try_from(offset + 0x80).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(bytes: &[u8]) -> &OsStr {
        OsStr::from_bytes(bytes)
    }

    #[test]
    fn utf8_names_are_unchanged_and_borrowed() {
        let name = os("pod-ü\\x2d.slice".as_bytes());
        assert!(matches!(to_str(name), Cow::Borrowed("pod-ü\\x2d.slice")));
        assert_eq!(to_os_string("pod-ü\\x2d.slice"), name);
    }

    #[test]
    fn undecodable_bytes_round_trip() {
        for raw in [
            &b"caf\xe9"[..],
            b"\xff\xfe",
            b"a\xc3",              // cut in the middle of a two-byte sequence
            b"\xe2\x82x\x80",      // invalid continuation, then a lone continuation byte
            b"ok\xf4\x90\x80\x80", // above U+10FFFF
        ] {
            let text = to_str(os(raw));
            assert!(matches!(text, Cow::Owned(_)), "{raw:?}");
            assert_eq!(to_os_string(&text).as_bytes(), raw, "{text:?}");
        }
    }

    #[test]
    fn different_names_stay_different() {
        // A lossy conversion makes both "caf\u{FFFD}".
        assert_ne!(to_str(os(b"caf\xe9")), to_str(os(b"caf\xe8")));
        assert_ne!(to_str(os(b"caf\xe9")), "caf\u{FFFD}");
    }
}
