//! Framing: how a session's byte stream is cut into packets.

use std::fmt;

/// Why a byte stream cannot be framed; the session is closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The size field is smaller than the header itself.
    SizeTooSmall {
        /// The size the header declared.
        size: usize,
        /// The smallest valid packet.
        min: usize,
    },
    /// The size field exceeds the configured maximum packet size.
    TooLarge {
        /// The size the header declared.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The bytes are not a valid packet, for a reason of the codec's own (a custom codec's
    /// "bad input"); the session is closed with this text as the reason.
    Invalid(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::SizeTooSmall { size, min } => {
                write!(f, "packet size {size} is smaller than the minimum {min}")
            }
            FrameError::TooLarge { size, max } => {
                write!(f, "packet size {size} exceeds the maximum {max}")
            }
            FrameError::Invalid(why) => write!(f, "invalid packet: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Cuts a byte stream into packets. Called on a worker thread with everything received and
/// not yet consumed; returns the length of the first complete packet, `Ok(None)` when more
/// bytes are needed, or an error that closes the session.
///
/// The crate has three: [`LengthPrefixed`] (a size header), [`Delimited`] (lines, or any
/// delimiter byte) and [`RawStream`] (no framing). A codec of your own must enforce its
/// limit on every packet it frames, complete or not, or a peer makes the session buffer as
/// much as it sends. Records of a fixed 4 bytes:
///
/// ```
/// use cport_server::{Codec, FrameError};
///
/// struct Fixed4;
///
/// impl Codec for Fixed4 {
///     fn frame(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
///         Ok((buf.len() >= 4).then_some(4))
///     }
/// }
///
/// assert_eq!(Fixed4.frame(b"abcdef"), Ok(Some(4)));
/// assert_eq!(Fixed4.frame(b"abc"), Ok(None));
/// ```
pub trait Codec: Send + Sync + 'static {
    /// Length of the first complete packet at the start of `buf`.
    fn frame(&self, buf: &[u8]) -> Result<Option<usize>, FrameError>;

    /// What the handler's [`on_packet`](crate::Handler::on_packet) gets of a frame that
    /// [`frame`](Codec::frame) cut: by default the whole frame, header included;
    /// [`Delimited`] leaves out the line's ending.
    fn packet<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame
    }
}

/// Packets that end with a delimiter byte: text lines (`\n`, with or without `\r` before it)
/// or records separated by any byte (`\0`).
///
/// A line longer than the maximum closes the session with
/// [`FrameError::TooLarge`] ([`CloseReason::Protocol`](crate::CloseReason::Protocol), logged
/// at info level), whether its delimiter has arrived or not: a peer cannot make a session
/// buffer more than one line's worth by never sending the delimiter. The maximum counts the
/// line without its ending (the delimiter, and the `\r` before it when `\r` is stripped).
///
/// The handler gets each line without its ending ([`Codec::packet`]).
///
/// ```
/// use cport_server::{Codec, Delimited, FrameError};
///
/// let lines = Delimited::lines(10);
/// // One line and the start of the next: the first is framed with its ending...
/// assert_eq!(lines.frame(b"JOIN bob\r\nSA"), Ok(Some(10)));
/// // ...and the handler sees it without.
/// assert_eq!(lines.packet(b"JOIN bob\r\n"), b"JOIN bob");
/// assert_eq!(lines.frame(b"SA"), Ok(None), "more bytes needed");
/// // Too long, complete or not.
/// assert_eq!(
///     lines.frame(b"SAY hello world\n"),
///     Err(FrameError::TooLarge { size: 15, max: 10 })
/// );
/// assert!(lines.frame(b"SAY hello world").is_err());
///
/// // Records ended by a zero byte, kept as they are (no `\r` stripping).
/// let records = Delimited::new(0, 64);
/// assert_eq!(records.frame(b"a\r\0b"), Ok(Some(3)));
/// assert_eq!(records.packet(b"a\r\0"), b"a\r");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimited {
    delimiter: u8,
    strip_cr: bool,
    max: usize,
}

impl Delimited {
    /// Records ended by `delimiter`, each at most `max` bytes without it; no `\r` stripping.
    pub fn new(delimiter: u8, max: usize) -> Self {
        Delimited {
            delimiter,
            strip_cr: false,
            max,
        }
    }

    /// Text lines: ended by `\n`, a `\r` before it stripped too (so `nc` and `telnet`
    /// clients both work), each at most `max` bytes without its ending.
    pub fn lines(max: usize) -> Self {
        Delimited {
            delimiter: b'\n',
            strip_cr: true,
            max,
        }
    }

    /// Whether a `\r` just before the delimiter belongs to the ending (left out of the
    /// packet and of the length limit).
    pub fn strip_cr(mut self, strip: bool) -> Self {
        self.strip_cr = strip;
        self
    }

    /// The delimiter byte.
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    /// The longest line accepted, without its ending.
    pub fn max_len(&self) -> usize {
        self.max
    }

    /// The line without its ending: the delimiter if present, and the `\r` before it when
    /// `\r` is stripped.
    fn content<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        let line = match frame.split_last() {
            Some((&last, rest)) if last == self.delimiter => rest,
            _ => frame,
        };
        match line.split_last() {
            Some((&b'\r', rest)) if self.strip_cr && line.len() < frame.len() => rest,
            _ => line,
        }
    }
}

impl Codec for Delimited {
    fn frame(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let too_large = |size| FrameError::TooLarge {
            size,
            max: self.max,
        };
        match buf.iter().position(|&b| b == self.delimiter) {
            Some(end) => {
                let frame = &buf[..end + 1];
                let len = self.content(frame).len();
                if len > self.max {
                    return Err(too_large(len));
                }
                Ok(Some(end + 1))
            }
            None => {
                // No delimiter yet. The bytes so far may still end as a valid line only if
                // they fit, allowing for a final `\r` of the ending when it is stripped.
                let fits = buf.len() <= self.max
                    || (self.strip_cr && buf.len() == self.max + 1 && buf.last() == Some(&b'\r'));
                if fits {
                    Ok(None)
                } else {
                    Err(too_large(buf.len()))
                }
            }
        }
    }

    fn packet<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        self.content(frame)
    }
}

/// Width of the size field of [`LengthPrefixed`] packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeField {
    /// One unsigned byte (the course protocol's default): packets of at most 255 bytes.
    U8,
    /// Two bytes, little-endian: packets of at most 65535 bytes.
    U16,
}

impl SizeField {
    /// Bytes the size field takes.
    pub fn width(self) -> usize {
        match self {
            SizeField::U8 => 1,
            SizeField::U16 => 2,
        }
    }

    /// The largest size the field can hold.
    pub fn max(self) -> usize {
        match self {
            SizeField::U8 => u8::MAX as usize,
            SizeField::U16 => u16::MAX as usize,
        }
    }

    /// Bytes of a `[size][type]` header: the size field and the type byte.
    pub fn header_len(self) -> usize {
        self.width() + 1
    }

    /// The size a packet at the start of `buf` declares (its whole length, header
    /// included), or `None` until the size field has arrived.
    pub fn read(self, buf: &[u8]) -> Option<usize> {
        match self {
            SizeField::U8 => buf.first().map(|&b| b as usize),
            SizeField::U16 => Some(u16::from_le_bytes([*buf.first()?, *buf.get(1)?]) as usize),
        }
    }

    /// Appends the `[size][type]` header of a packet with `body_len` body bytes. Panics if
    /// the packet does not fit the size field (a programming error, not input).
    pub fn put_header(self, out: &mut Vec<u8>, kind: u8, body_len: usize) {
        let total = self.header_len() + body_len;
        assert!(total <= self.max(), "packet of {total} bytes does not fit");
        match self {
            SizeField::U8 => out.push(total as u8),
            SizeField::U16 => out.extend_from_slice(&(total as u16).to_le_bytes()),
        }
        out.push(kind);
    }
}

/// Packets that start with their own total size (header included), then a type byte, as in
/// the IOCP course protocol: `[size][type][body…]`.
///
/// ```
/// use cport_server::{Codec, FrameError, LengthPrefixed, SizeField};
///
/// let codec = LengthPrefixed::new(SizeField::U16).max_packet(1024);
/// let packet = codec.encode(7, b"body");
/// assert_eq!(&packet[..], &[7, 0, 7, b'b', b'o', b'd', b'y']);
/// // One packet and the start of the next: the first is framed, whole.
/// let mut stream = packet.to_vec();
/// stream.extend_from_slice(&[9]);
/// assert_eq!(codec.frame(&stream), Ok(Some(7)));
/// assert_eq!(codec.frame(&stream[7..]), Ok(None), "more bytes needed");
/// // A size over the maximum closes the session.
/// assert_eq!(
///     codec.frame(&[0x01, 0x10, 1]),
///     Err(FrameError::TooLarge { size: 0x1001, max: 1024 })
/// );
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LengthPrefixed {
    size: SizeField,
    max: usize,
}

impl LengthPrefixed {
    /// A codec with the given size field; the maximum packet is what the field can express.
    pub fn new(size: SizeField) -> Self {
        LengthPrefixed {
            size,
            max: size.max(),
        }
    }

    /// Lowers the maximum packet size (packets declaring more close the session).
    pub fn max_packet(mut self, max: usize) -> Self {
        self.max = max.clamp(self.header_len(), self.size.max());
        self
    }

    /// The size field.
    pub fn size_field(&self) -> SizeField {
        self.size
    }

    /// Size field plus type byte.
    pub fn header_len(&self) -> usize {
        self.size.header_len()
    }

    /// Encodes one packet: header (total size, type) then `body`. Panics if the packet does
    /// not fit the size field (a programming error, not input).
    pub fn encode(&self, kind: u8, body: &[u8]) -> bytes::Bytes {
        let mut out = Vec::with_capacity(self.header_len() + body.len());
        self.encode_into(&mut out, kind, body);
        out.into()
    }

    /// Appends one encoded packet to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>, kind: u8, body: &[u8]) {
        self.size.put_header(out, kind, body.len());
        out.extend_from_slice(body);
    }
}

impl Codec for LengthPrefixed {
    fn frame(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(size) = self.size.read(buf) else {
            return Ok(None);
        };
        let min = self.header_len();
        if size < min {
            return Err(FrameError::SizeTooSmall { size, min });
        }
        if size > self.max {
            return Err(FrameError::TooLarge {
                size,
                max: self.max,
            });
        }
        Ok((buf.len() >= size).then_some(size))
    }
}

/// No framing: whatever arrived is one "packet" (a byte-stream echo, a proxy).
///
/// ```
/// use cport_server::{Codec, RawStream};
///
/// assert_eq!(RawStream.frame(b"any bytes"), Ok(Some(9)));
/// assert_eq!(RawStream.frame(b""), Ok(None));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RawStream;

impl Codec for RawStream {
    fn frame(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        Ok((!buf.is_empty()).then_some(buf.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_reads_back_what_it_wrote_for_both_widths() {
        for (h, body_len, want) in [
            (SizeField::U8, 3, vec![5u8, 9]),
            (SizeField::U16, 300, vec![0x2F, 0x01, 9]),
        ] {
            let mut out = Vec::new();
            h.put_header(&mut out, 9, body_len);
            assert_eq!(out, want);
            assert_eq!(h.read(&out), Some(h.header_len() + body_len));
            assert_eq!(
                h.read(&out[..h.width() - 1]),
                None,
                "size field not complete"
            );
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_header_for_a_packet_too_large_for_its_field_panics() {
        SizeField::U8.put_header(&mut Vec::new(), 1, 254);
    }

    #[test]
    fn u8_header_frames_whole_packets_only() {
        let c = LengthPrefixed::new(SizeField::U8);
        let p = c.encode(1, &[9, 9, 9, 9, 9]);
        assert_eq!(&p[..2], &[7, 1]);
        for cut in 0..p.len() {
            assert_eq!(c.frame(&p[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(c.frame(&p), Ok(Some(7)));
    }

    #[test]
    fn u16_header_is_little_endian_and_counts_itself() {
        let c = LengthPrefixed::new(SizeField::U16);
        let p = c.encode(3, &[0u8; 300]);
        assert_eq!(&p[..3], &[0x2F, 0x01, 3]);
        assert_eq!(c.frame(&p), Ok(Some(303)));
    }

    #[test]
    fn sizes_below_the_header_or_above_the_max_are_errors() {
        let c = LengthPrefixed::new(SizeField::U8).max_packet(100);
        assert_eq!(
            c.frame(&[0]),
            Err(FrameError::SizeTooSmall { size: 0, min: 2 })
        );
        assert_eq!(
            c.frame(&[1, 0]),
            Err(FrameError::SizeTooSmall { size: 1, min: 2 })
        );
        assert_eq!(c.frame(&[2, 0]), Ok(Some(2)));
        assert_eq!(
            c.frame(&[101]),
            Err(FrameError::TooLarge {
                size: 101,
                max: 100
            })
        );
    }

    #[test]
    fn a_complete_line_over_the_limit_is_an_error() {
        // The `server_chat` example's old codec relayed a complete 6,006-byte line with a
        // 4,096-byte limit: the limit was checked only while the newline had not arrived.
        let c = Delimited::lines(4096);
        let mut line = vec![b'x'; 6006];
        line.push(b'\n');
        assert_eq!(
            c.frame(&line),
            Err(FrameError::TooLarge {
                size: 6006,
                max: 4096
            })
        );
    }

    #[test]
    fn a_partial_line_over_the_limit_is_an_error_before_its_delimiter() {
        let c = Delimited::new(b';', 4);
        assert_eq!(c.frame(b"abcd"), Ok(None), "may still end in time");
        assert_eq!(
            c.frame(b"abcde"),
            Err(FrameError::TooLarge { size: 5, max: 4 })
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes_with_either_ending() {
        let c = Delimited::lines(3);
        assert_eq!(c.frame(b"abc\n"), Ok(Some(4)));
        assert_eq!(c.frame(b"abc\r"), Ok(None), "the \\r may be the ending's");
        assert_eq!(c.frame(b"abc\r\n"), Ok(Some(5)));
        assert_eq!(c.packet(b"abc\r\n"), b"abc");
        assert!(c.frame(b"abcd").is_err());
        assert!(c.frame(b"abcx\n").is_err());
        // Without stripping, the `\r` is content and counts.
        let raw = c.strip_cr(false);
        assert_eq!(
            raw.frame(b"abc\r\n"),
            Err(FrameError::TooLarge { size: 4, max: 3 })
        );
        assert_eq!(raw.frame(b"ab\r\n"), Ok(Some(4)));
        assert_eq!(raw.packet(b"ab\r\n"), b"ab\r");
    }

    #[test]
    fn the_handler_gets_lines_without_their_endings() {
        let c = Delimited::lines(100);
        assert_eq!(c.packet(b"hi\n"), b"hi");
        assert_eq!(c.packet(b"hi\r\n"), b"hi");
        assert_eq!(c.packet(b"\n"), b"");
        assert_eq!(c.packet(b"\r\n"), b"");
        assert_eq!(
            c.packet(b"a\rb\n"),
            b"a\rb",
            "only a \\r just before the end"
        );
        // Other codecs hand over the whole frame.
        assert_eq!(RawStream.packet(b"hi\n"), b"hi\n");
    }

    #[test]
    fn lines_end_at_the_first_delimiter_only() {
        let c = Delimited::new(0, 10);
        assert_eq!(c.frame(b"a\0b\0"), Ok(Some(2)));
        assert_eq!(c.frame(b"\0"), Ok(Some(1)), "an empty record");
        assert_eq!(c.frame(b""), Ok(None));
        assert_eq!((c.delimiter(), c.max_len()), (0, 10));
    }
}
