//! Property tests of the course protocol: every packet round-trips through `encode` and
//! `decode` for both header widths; `decode` of arbitrary bytes and `frame_len` on arbitrary
//! prefixes never panic, and `frame_len` never claims more than the buffer holds.

use cport_mmo_proto::{
    frame_len, header_len, ClientPacket, Direction, Name, ServerPacket, SizeField, CHAT_SIZE,
};
use proptest::prelude::*;

fn field() -> impl Strategy<Value = SizeField> {
    prop_oneof![Just(SizeField::U8), Just(SizeField::U16)]
}

fn name() -> impl Strategy<Value = Name> {
    any::<[u8; 20]>()
}

fn client() -> impl Strategy<Value = ClientPacket> {
    prop_oneof![
        name().prop_map(|name| ClientPacket::Login { name }),
        (0u8..4, any::<u32>()).prop_map(|(d, move_time)| ClientPacket::Move {
            direction: Direction::from_u8(d).unwrap(),
            move_time
        }),
        prop::collection::vec(any::<u8>(), 1..=CHAT_SIZE)
            .prop_map(|mess| ClientPacket::Chat { mess }),
        Just(ClientPacket::Attack),
        Just(ClientPacket::Teleport),
        Just(ClientPacket::Logout),
    ]
}

fn server() -> impl Strategy<Value = ServerPacket> {
    prop_oneof![
        any::<(i32, i32, i32, i32, i32, i16, i16)>().prop_map(
            |(id, hp, max_hp, exp, level, x, y)| ServerPacket::LoginInfo {
                id,
                hp,
                max_hp,
                exp,
                level,
                x,
                y
            }
        ),
        (any::<i32>(), any::<i16>(), any::<i16>(), name())
            .prop_map(|(id, x, y, name)| ServerPacket::AddObject { id, x, y, name }),
        any::<i32>().prop_map(|id| ServerPacket::RemoveObject { id }),
        any::<(i32, i16, i16, u32)>().prop_map(|(id, x, y, move_time)| {
            ServerPacket::MoveObject {
                id,
                x,
                y,
                move_time,
            }
        }),
        (
            any::<i32>(),
            prop::collection::vec(any::<u8>(), 0..=CHAT_SIZE)
        )
            .prop_map(|(id, mess)| ServerPacket::Chat { id, mess }),
        Just(ServerPacket::LoginOk),
        Just(ServerPacket::LoginFail),
        any::<(i32, i32, i32, i32)>().prop_map(|(hp, max_hp, exp, level)| {
            ServerPacket::StatChange {
                hp,
                max_hp,
                exp,
                level,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_packets_round_trip(h in field(), p in client()) {
        let bytes = p.encode(h);
        prop_assert_eq!(h.read(&bytes), Some(bytes.len()));
        prop_assert_eq!(frame_len(&bytes, h), Some(bytes.len()));
        prop_assert_eq!(ClientPacket::decode(&bytes, h), Ok(p));
    }

    #[test]
    fn server_packets_round_trip(h in field(), p in server()) {
        let bytes = p.encode(h);
        prop_assert_eq!(h.read(&bytes), Some(bytes.len()));
        prop_assert_eq!(frame_len(&bytes, h), Some(bytes.len()));
        prop_assert_eq!(ServerPacket::decode(&bytes, h), Ok(p));
    }

    /// Arbitrary bytes: decoding never panics, and whatever decodes re-encodes to the same
    /// bytes (so nothing is accepted loosely).
    #[test]
    fn decode_of_arbitrary_bytes_never_panics(
        h in field(),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok(p) = ClientPacket::decode(&bytes, h) {
            prop_assert_eq!(p.encode(h), bytes.clone());
        }
        if let Ok(p) = ServerPacket::decode(&bytes, h) {
            prop_assert_eq!(p.encode(h), bytes);
        }
    }

    /// A packet with a fixed size field and type and arbitrary body length: the same
    /// decoders, aimed past the size check.
    #[test]
    fn decode_with_a_consistent_header_never_panics(
        h in field(),
        kind in 0u8..12,
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = Vec::new();
        h.put_header(&mut bytes, kind, body.len());
        bytes.extend_from_slice(&body);
        let _ = ClientPacket::decode(&bytes, h);
        let _ = ServerPacket::decode(&bytes, h);
    }

    /// `frame_len` on any prefix: never panics, never more than the buffer, never less than
    /// a header.
    #[test]
    fn frame_len_stays_within_the_buffer(
        h in field(),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        for cut in 0..=bytes.len() {
            if let Some(n) = frame_len(&bytes[..cut], h) {
                prop_assert!(n <= cut, "frame_len {} of {} bytes", n, cut);
                prop_assert!(n >= header_len(h));
            }
        }
    }
}

/// Every valid client packet, truncated at every byte boundary, is refused (never decoded
/// as something else, never a panic), and `frame_len` waits for the rest.
#[test]
fn truncated_client_packets_are_refused_at_every_cut() {
    let all = [
        ClientPacket::Login {
            name: cport_mmo_proto::name("alice"),
        },
        ClientPacket::Move {
            direction: Direction::Left,
            move_time: 0xDEAD_BEEF,
        },
        ClientPacket::Chat {
            mess: b"hello".to_vec(),
        },
        ClientPacket::Chat {
            mess: vec![b'x'; CHAT_SIZE],
        },
        ClientPacket::Attack,
        ClientPacket::Teleport,
        ClientPacket::Logout,
    ];
    for h in [SizeField::U8, SizeField::U16] {
        for p in &all {
            let bytes = p.encode(h);
            for cut in 0..bytes.len() {
                assert!(
                    ClientPacket::decode(&bytes[..cut], h).is_err(),
                    "{p:?} cut at {cut}"
                );
                if cut >= h.width() {
                    assert_eq!(frame_len(&bytes[..cut], h), None, "{p:?} cut at {cut}");
                }
            }
        }
    }
}
