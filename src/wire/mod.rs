//! The wire forms of what the hubs deliver: the JSON envelope, the WebSocket frame around it,
//! the SSE event. The hub core (`hub/`) knows no wire format; the transports (`ws/`, `sse.rs`)
//! and the channel protocol read these.
//!
//! # Encoded once per message
//!
//! A message is encoded at most once per wire form, whoever sends it, and every connection
//! writes the same bytes: the first connection that needs a form fills the message's slot
//! for it ([`Message::encoded`](crate::Message), a `OnceLock` per slot), every later one
//! clones a reference. The slots, and what each holds:
//!
//! | slot | holds | filled by |
//! |---|---|---|
//! | [`ENVELOPE_FRAME`] | one final, unmasked WebSocket text frame: the header, then the JSON envelope (`envelope_json` is its tail, same allocation) | the first WebSocket connection (envelope framing) or `envelope_json` caller |
//! | [`SSE_EVENT`] | the SSE event (`event:`, `data:` lines, `id:`, blank line) | the first SSE stream |
//!
//! A history replay reads the same messages, so it reuses their slots too.
//!
//! # Growing the set
//!
//! The forms still to come are each a pure function of one message and a parameter set that
//! is the same for every connection that negotiated it, so each is one more slot here and one
//! more `OnceLock` in the message, never per-connection state:
//!
//! - a permessage-deflate frame of the envelope, compressed without context takeover (RFC 7692
//!   §7.1.1) so every connection that negotiated the same parameters can send the same bytes;
//! - a state channel's delta frame (the change against the key's previous value, computed once
//!   per change and sent to the connections that hold that previous value);
//! - a binary frame for document updates (the payload itself, no envelope).
//!
//! A form that depends on the connection (its own compression context, its own sequence
//! number) does not belong in a slot: it is encoded by that connection's writer.

pub(crate) mod envelope;
pub(crate) mod frame;

use crate::hub::ENCODINGS;

/// The slot of the envelope's WebSocket text frame.
pub(crate) const ENVELOPE_FRAME: usize = 0;
/// The slot of the SSE event.
pub(crate) const SSE_EVENT: usize = 1;

const _: () = assert!(ENVELOPE_FRAME < ENCODINGS && SSE_EVENT < ENCODINGS);

/// Standard base64 (RFC 4648 alphabet, `=` padding), small enough not to need a dependency.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
        assert_eq!(base64(&[0xfb, 0xef]), "++8=");
    }
}
