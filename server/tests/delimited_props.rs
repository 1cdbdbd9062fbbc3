//! Property tests of the line codec (`Delimited`): however a stream is cut into receives, the
//! same lines come out and the same stream is refused; an over-long line is refused whether
//! or not its delimiter has arrived; what comes out matches a plain split of the stream.

use cport_server::{Codec, Delimited};
use proptest::prelude::*;

/// What framing a stream gave: the lines handed to the handler, and whether it stopped at an
/// error (as the server closes the session at the first one).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    lines: Vec<Vec<u8>>,
    refused: bool,
}

/// Feeds `chunks` one receive at a time and frames as the server does: frame what has
/// accumulated, consume, repeat until more bytes are needed.
fn feed(c: &Delimited, chunks: &[&[u8]]) -> Outcome {
    let mut acc = Vec::new();
    let mut lines = Vec::new();
    for chunk in chunks {
        acc.extend_from_slice(chunk);
        loop {
            match c.frame(&acc) {
                Ok(Some(n)) => {
                    assert!(n > 0 && n <= acc.len(), "framed {n} of {}", acc.len());
                    let frame: Vec<u8> = acc.drain(..n).collect();
                    lines.push(c.packet(&frame).to_vec());
                }
                Ok(None) => break,
                Err(_) => {
                    return Outcome {
                        lines,
                        refused: true,
                    }
                }
            }
        }
        // Memory stays bounded: what waits for its delimiter is at most one line and its
        // ending.
        assert!(acc.len() <= c.max_len() + 2, "{} bytes buffered", acc.len());
    }
    Outcome {
        lines,
        refused: false,
    }
}

/// The same by hand: split at every delimiter, drop the ending, refuse the first line over
/// the limit (or an unfinished one that can no longer fit).
fn model(delim: u8, strip_cr: bool, max: usize, stream: &[u8]) -> Outcome {
    let mut lines = Vec::new();
    let mut parts: Vec<&[u8]> = stream.split(|&b| b == delim).collect();
    let tail = parts.pop().unwrap_or(&[]);
    for part in parts {
        let line = match part.split_last() {
            Some((&b'\r', rest)) if strip_cr => rest,
            _ => part,
        };
        if line.len() > max {
            return Outcome {
                lines,
                refused: true,
            };
        }
        lines.push(line.to_vec());
    }
    let may_fit = tail.len() <= max || (strip_cr && tail.len() == max + 1 && tail.ends_with(b"\r"));
    Outcome {
        lines,
        refused: !may_fit,
    }
}

/// Cuts `bytes` at the given offsets (taken modulo its length, sorted, deduplicated).
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

/// Bytes that often are the delimiter or `\r`, so that lines, endings and near-limit lengths
/// all occur.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => Just(b'x'),
            2 => Just(b'\n'),
            1 => Just(b'\r'),
            1 => Just(0u8),
            1 => any::<u8>(),
        ],
        0..200,
    )
}

fn codec() -> impl Strategy<Value = (Delimited, bool)> {
    (
        prop_oneof![Just(b'\n'), Just(0u8)],
        any::<bool>(),
        0usize..24,
    )
        .prop_map(|(d, cr, max)| (Delimited::new(d, max).strip_cr(cr), cr))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any split of the stream into receives gives the same lines and the same verdict as
    /// one receive of the whole, and both agree with splitting the stream by hand.
    #[test]
    fn any_split_into_receives_gives_the_same_lines(
        (c, strip_cr) in codec(),
        bytes in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let whole = feed(&c, &[&bytes]);
        let split = feed(&c, &chunks(&bytes, &cuts));
        prop_assert_eq!(&split, &whole);
        prop_assert_eq!(whole, model(c.delimiter(), strip_cr, c.max_len(), &bytes));
    }

    /// Lines within the limit, then one over it: the lines before it are handed over and
    /// the long one is refused, with its delimiter arrived or not, in one receive or a byte
    /// at a time.
    #[test]
    fn an_over_long_line_is_refused_with_or_without_its_delimiter(
        max in 0usize..64,
        good in prop::collection::vec(0usize..64, 0..5),
        over in 1usize..64,
        strip_cr in any::<bool>(),
        terminated in any::<bool>(),
    ) {
        let c = Delimited::lines(max).strip_cr(strip_cr);
        // `\r\n` endings where `\r` is stripped (else the `\r` would count as content).
        let ending: &[u8] = if strip_cr { b"\r\n" } else { b"\n" };
        let want: Vec<Vec<u8>> = good.iter().map(|&n| vec![b'a'; n.min(max)]).collect();
        let mut bytes = Vec::new();
        for line in &want {
            bytes.extend_from_slice(line);
            bytes.extend_from_slice(ending);
        }
        bytes.extend(std::iter::repeat_n(b'b', max + over));
        if terminated {
            bytes.extend_from_slice(ending);
        }
        let expected = Outcome { lines: want, refused: true };
        prop_assert_eq!(&feed(&c, &[&bytes]), &expected);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&feed(&c, &bytewise), &expected);
    }
}
