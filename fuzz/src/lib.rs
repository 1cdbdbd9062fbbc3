//! What the codec targets share: frame a fuzzed byte stream fed in fuzzed chunk sizes, as
//! the server does (append what arrived, frame and consume whole packets, repeat), and check
//! the codec's invariants.

use cport_server::{Codec, FrameError, LengthPrefixed, SizeField};

/// Input layout: byte 0 picks the maximum packet (scaled to the field), byte 1 the number of
/// chunk-size bytes that follow; the chunk sizes (1..=256 each, cycled) then cut the rest.
pub fn frame_stream(h: SizeField, data: &[u8]) {
    let [max_sel, n_chunks, rest @ ..] = data else {
        return;
    };
    let n_chunks = (*n_chunks as usize).min(rest.len());
    let (chunk_sizes, stream) = rest.split_at(n_chunks);
    let max = (*max_sel as usize) * h.max() / 255;
    let codec = LengthPrefixed::new(h).max_packet(max);
    let max = max.clamp(h.header_len(), h.max());

    let mut acc: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut consumed = 0;
    let mut i = 0;
    while at < stream.len() {
        let step = chunk_sizes
            .get(i % chunk_sizes.len().max(1))
            .map_or(stream.len(), |&c| c as usize + 1);
        i += 1;
        let end = (at + step).min(stream.len());
        acc.extend_from_slice(&stream[at..end]);
        at = end;
        loop {
            match codec.frame(&acc) {
                Ok(Some(n)) => {
                    assert!(n <= acc.len(), "framed {n} of {} bytes", acc.len());
                    assert!(n >= h.header_len() && n <= max, "framed {n}, limit {max}");
                    assert_eq!(h.read(&acc), Some(n), "length is what the header says");
                    acc.drain(..n);
                    consumed += n;
                }
                Ok(None) => {
                    // Waiting: either the size field is incomplete or the packet is.
                    if let Some(size) = h.read(&acc) {
                        assert!(size > acc.len());
                        assert!(size >= h.header_len() && size <= max);
                    } else {
                        assert!(acc.len() < h.width());
                    }
                    break;
                }
                Err(FrameError::SizeTooSmall { size, min }) => {
                    assert_eq!(min, h.header_len());
                    assert!(size < min);
                    return;
                }
                Err(FrameError::TooLarge { size, max: m }) => {
                    assert_eq!(m, max);
                    assert!(size > max);
                    return;
                }
                Err(FrameError::Invalid(why)) => panic!("LengthPrefixed never says Invalid: {why}"),
            }
        }
    }
    assert_eq!(consumed + acc.len(), stream.len());
}
