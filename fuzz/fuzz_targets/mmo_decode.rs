//! The mmo packet decoders (client and server direction) on fuzzed packets, both header
//! widths: never a panic, `frame_len` within the buffer, and anything that decodes re-encodes
//! to exactly the bytes it came from.
#![no_main]
use cport_mmo_proto::{frame_len, ClientPacket, ServerPacket, SizeField};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for h in [SizeField::U8, SizeField::U16] {
        if let Ok(p) = ClientPacket::decode(data, h) {
            assert_eq!(p.encode(h), data, "{p:?}");
        }
        if let Ok(p) = ServerPacket::decode(data, h) {
            assert_eq!(p.encode(h), data, "{p:?}");
        }
        if let Some(n) = frame_len(data, h) {
            assert!(n <= data.len());
            // The framed packet decodes or is refused, never panics.
            let _ = ClientPacket::decode(&data[..n], h);
            let _ = ServerPacket::decode(&data[..n], h);
        }
    }
});
