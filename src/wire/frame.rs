//! The header of a WebSocket frame a server sends (RFC 6455 §5.2), for the frames the crate
//! writes below tungstenite: a message's cached envelope frame (`wire::envelope`) and the raw
//! frames of `ws/writer.rs`.

/// The longest WebSocket frame header a server sends (RFC 6455 §5.2: two bytes, and eight
/// more for a 64-bit length; no mask).
pub(crate) const HEADROOM: usize = 10;

/// RFC 6455 §5.2 opcodes.
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;

/// The header of a final, unmasked (server-to-client) WebSocket frame of `len` payload bytes,
/// and how many of the ten bytes it takes (RFC 6455 §5.2: the shortest length form).
pub(crate) fn header(opcode: u8, len: usize) -> ([u8; HEADROOM], usize) {
    let mut header = [0u8; HEADROOM];
    header[0] = 0x80 | opcode;
    let used = if let Ok(short) = u8::try_from(len)
        && short < 126
    {
        header[1] = short;
        2
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, used)
}

/// How many bytes the header at the start of `frame` takes (a frame [`header`] made): two, and
/// two or eight more for the longer length forms.
pub(crate) fn header_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_uses_the_shortest_length_form_and_header_len_reads_it_back() {
        for (len, used) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let (bytes, n) = header(TEXT, len);
            assert_eq!(n, used, "{len}");
            assert_eq!(bytes[0], 0x81, "final text frame");
            assert_eq!(header_len(&bytes[..n]), used, "{len}");
        }
    }
}
