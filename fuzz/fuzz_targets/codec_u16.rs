//! The framing codec with a two-byte size field, fed a fuzzed stream in fuzzed chunks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cport_fuzz::frame_stream(cport_server::SizeField::U16, data));
