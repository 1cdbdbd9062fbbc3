//! Property tests of the framing codec (`LengthPrefixed`), both size-field widths: whatever
//! the chunking, a stream of valid packets frames back into exactly those packets; any byte
//! string either frames into packets within the limits or stops at a `FrameError`, never a
//! panic and never a length beyond the buffer.

use cport_server::{Codec, FrameError, LengthPrefixed, SizeField};
use proptest::prelude::*;

/// Frames every whole packet out of `acc` as the server does (frame, consume, repeat);
/// returns the packets cut, leaving the incomplete tail in `acc`.
fn drain(c: &LengthPrefixed, acc: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut out = Vec::new();
    loop {
        match c.frame(acc)? {
            Some(n) => {
                assert!(n <= acc.len(), "framed {n} bytes of {}", acc.len());
                assert!(n >= c.header_len(), "framed {n} bytes, below the header");
                out.push(acc.drain(..n).collect());
            }
            None => return Ok(out),
        }
    }
}

fn field() -> impl Strategy<Value = SizeField> {
    prop_oneof![Just(SizeField::U8), Just(SizeField::U16)]
}

/// Cuts `bytes` at the given (sorted, deduplicated) offsets.
fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts.into_iter().chain([bytes.len()]) {
        out.push(&bytes[at..c]);
        at = c;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Valid packets encoded back to back and fed in arbitrary chunks come back unchanged.
    #[test]
    fn chunked_stream_frames_back_into_the_same_packets(
        h in field(),
        max_body in 0usize..300,
        packets in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)), 0..20),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let c = LengthPrefixed::new(h);
        let limit = (h.max() - h.header_len()).min(max_body);
        let packets: Vec<(u8, Vec<u8>)> = packets
            .into_iter()
            .map(|(k, mut b)| { b.truncate(limit); (k, b) })
            .collect();
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (kind, body) in &packets {
            let p = c.encode(*kind, body);
            stream.extend_from_slice(&p);
            want.push(p.to_vec());
        }
        let mut acc = Vec::new();
        let mut got = Vec::new();
        for chunk in chunks(&stream, &cuts) {
            acc.extend_from_slice(chunk);
            got.extend(drain(&c, &mut acc).expect("valid packets frame"));
        }
        prop_assert!(acc.is_empty(), "{} bytes left over", acc.len());
        prop_assert_eq!(got, want);
    }

    /// Any byte string, in any chunks, frames into packets within the limits or stops at an
    /// error that names a size outside them.
    #[test]
    fn arbitrary_bytes_frame_within_limits_or_fail(
        h in field(),
        max in 0usize..70_000,
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let c = LengthPrefixed::new(h).max_packet(max);
        let max = max.clamp(h.header_len(), h.max());
        let mut acc = Vec::new();
        let mut total = 0;
        for chunk in chunks(&bytes, &cuts) {
            acc.extend_from_slice(chunk);
            match drain(&c, &mut acc) {
                Ok(ps) => {
                    for p in ps {
                        prop_assert!(p.len() >= h.header_len() && p.len() <= max);
                        prop_assert_eq!(h.read(&p), Some(p.len()));
                        total += p.len();
                    }
                }
                Err(FrameError::SizeTooSmall { size, min }) => {
                    prop_assert_eq!(min, h.header_len());
                    prop_assert!(size < min);
                    prop_assert_eq!(h.read(&acc), Some(size));
                    return Ok(());
                }
                Err(FrameError::TooLarge { size, max: m }) => {
                    prop_assert_eq!(m, max);
                    prop_assert!(size > max);
                    prop_assert_eq!(h.read(&acc), Some(size));
                    return Ok(());
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        prop_assert_eq!(total + acc.len(), bytes.len());
    }

    /// Sizes 0, 1, below the header and above `max_packet` are errors whatever follows them.
    #[test]
    fn out_of_range_sizes_are_errors(
        h in field(),
        max in 3usize..255,
        size in 0usize..65_536,
        tail in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let c = LengthPrefixed::new(h).max_packet(max);
        let mut buf = Vec::new();
        match h {
            SizeField::U8 => buf.push(size as u8),
            SizeField::U16 => buf.extend_from_slice(&(size as u16).to_le_bytes()),
        }
        let size = h.read(&buf).unwrap();
        buf.extend_from_slice(&tail);
        let r = c.frame(&buf);
        if size < h.header_len() {
            prop_assert_eq!(r, Err(FrameError::SizeTooSmall { size, min: h.header_len() }));
        } else if size > max {
            prop_assert_eq!(r, Err(FrameError::TooLarge { size, max }));
        } else {
            prop_assert_eq!(r, Ok((buf.len() >= size).then_some(size)));
        }
    }
}

/// The fixed edge cases: sizes 0 and 1 (below both headers), exactly the header, and one
/// above the maximum, for both widths.
#[test]
fn edge_sizes_for_both_widths() {
    for h in [SizeField::U8, SizeField::U16] {
        let c = LengthPrefixed::new(h).max_packet(100);
        let enc = |size: usize| -> Vec<u8> {
            match h {
                SizeField::U8 => vec![size as u8],
                SizeField::U16 => (size as u16).to_le_bytes().to_vec(),
            }
        };
        let min = h.header_len();
        for size in 0..min {
            assert_eq!(
                c.frame(&enc(size)),
                Err(FrameError::SizeTooSmall { size, min })
            );
        }
        let mut just = enc(min);
        assert_eq!(c.frame(&just), Ok(None), "type byte not here yet");
        just.push(7);
        assert_eq!(c.frame(&just), Ok(Some(min)));
        assert_eq!(
            c.frame(&enc(101)),
            Err(FrameError::TooLarge {
                size: 101,
                max: 100
            })
        );
        // A size field cut before its end asks for more bytes.
        assert_eq!(c.frame(&enc(5)[..h.width() - 1]), Ok(None));
    }
}
