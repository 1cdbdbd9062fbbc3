//! Golden bytes: every packet of `course-protocol.md`, written out by hand, for both header
//! widths (the `u16` header adds one byte to every total), and the decoder's refusals.

use cport_mmo_proto::{
    name, ClientPacket, DecodeError, Direction, ServerPacket, SizeField, CHAT_SIZE,
};

/// `body` with the header for `kind` in front: `[size][type]` or `[size lo][size hi][type]`.
fn framed(h: SizeField, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    match h {
        SizeField::U8 => v.push((2 + body.len()) as u8),
        SizeField::U16 => v.extend_from_slice(&((3 + body.len()) as u16).to_le_bytes()),
    }
    v.push(kind);
    v.extend_from_slice(body);
    v
}

/// "abc" as a 20-byte NUL-padded name.
const ABC: [u8; 20] = [
    b'a', b'b', b'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn client_packets_u8() {
    let h = SizeField::U8;
    let cases: Vec<(ClientPacket, Vec<u8>)> = vec![
        (ClientPacket::Login { name: name("abc") }, {
            let mut v = vec![22, 0];
            v.extend_from_slice(&ABC);
            v
        }),
        (
            ClientPacket::Move {
                direction: Direction::Right,
                move_time: 0x0403_0201,
            },
            vec![7, 1, 3, 0x01, 0x02, 0x03, 0x04],
        ),
        (
            ClientPacket::Chat {
                mess: b"hi!".to_vec(),
            },
            vec![5, 2, b'h', b'i', b'!'],
        ),
        (ClientPacket::Attack, vec![2, 3]),
        (ClientPacket::Teleport, vec![2, 4]),
        (ClientPacket::Logout, vec![2, 5]),
    ];
    for (p, bytes) in cases {
        assert_eq!(p.encode(h), bytes, "{p:?}");
        assert_eq!(ClientPacket::decode(&bytes, h), Ok(p));
    }
}

#[test]
fn client_packets_u16() {
    let h = SizeField::U16;
    let cases: Vec<(ClientPacket, Vec<u8>)> = vec![
        (ClientPacket::Login { name: name("abc") }, {
            let mut v = vec![23, 0, 0];
            v.extend_from_slice(&ABC);
            v
        }),
        (
            ClientPacket::Move {
                direction: Direction::Up,
                move_time: 0xDEAD_BEEF,
            },
            vec![8, 0, 1, 0, 0xEF, 0xBE, 0xAD, 0xDE],
        ),
        (
            ClientPacket::Chat {
                mess: b"hi!".to_vec(),
            },
            vec![6, 0, 2, b'h', b'i', b'!'],
        ),
        (ClientPacket::Attack, vec![3, 0, 3]),
        (ClientPacket::Teleport, vec![3, 0, 4]),
        (ClientPacket::Logout, vec![3, 0, 5]),
    ];
    for (p, bytes) in cases {
        assert_eq!(p.encode(h), bytes, "{p:?}");
        assert_eq!(ClientPacket::decode(&bytes, h), Ok(p));
    }
}

#[test]
fn every_direction_has_its_wire_value() {
    for (v, d) in [
        (0, Direction::Up),
        (1, Direction::Down),
        (2, Direction::Left),
        (3, Direction::Right),
    ] {
        let p = ClientPacket::Move {
            direction: d,
            move_time: 0,
        };
        assert_eq!(p.encode(SizeField::U8)[2], v);
        assert_eq!(Direction::from_u8(v), Some(d));
    }
    assert_eq!(Direction::Up.delta(), (0, -1));
    assert_eq!(Direction::Down.delta(), (0, 1));
    assert_eq!(Direction::Left.delta(), (-1, 0));
    assert_eq!(Direction::Right.delta(), (1, 0));
}

fn server_cases() -> Vec<(ServerPacket, u8, Vec<u8>)> {
    vec![
        (
            ServerPacket::LoginInfo {
                id: 0x0102_0304,
                hp: 100,
                max_hp: 200,
                exp: -1,
                level: 7,
                x: 1999,
                y: 0x0102,
            },
            2,
            vec![
                0x04, 0x03, 0x02, 0x01, // id
                100, 0, 0, 0, // hp
                200, 0, 0, 0, // max_hp
                0xFF, 0xFF, 0xFF, 0xFF, // exp
                7, 0, 0, 0, // level
                0xCF, 0x07, // x = 1999
                0x02, 0x01, // y
            ],
        ),
        (
            ServerPacket::AddObject {
                id: 10_000,
                x: 5,
                y: 1999,
                name: name("abc"),
            },
            3,
            {
                let mut v = vec![0x10, 0x27, 0, 0, 5, 0, 0xCF, 0x07];
                v.extend_from_slice(&ABC);
                v
            },
        ),
        (
            ServerPacket::RemoveObject { id: -2 },
            4,
            vec![0xFE, 0xFF, 0xFF, 0xFF],
        ),
        (
            ServerPacket::MoveObject {
                id: 1,
                x: 2,
                y: 3,
                move_time: 0x0A0B_0C0D,
            },
            5,
            vec![1, 0, 0, 0, 2, 0, 3, 0, 0x0D, 0x0C, 0x0B, 0x0A],
        ),
        (
            ServerPacket::Chat {
                id: 9,
                mess: b"yo".to_vec(),
            },
            6,
            vec![9, 0, 0, 0, b'y', b'o'],
        ),
        (ServerPacket::LoginOk, 7, vec![]),
        (ServerPacket::LoginFail, 8, vec![]),
        (
            ServerPacket::StatChange {
                hp: 1,
                max_hp: 2,
                exp: 3,
                level: 4,
            },
            9,
            vec![1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0],
        ),
    ]
}

#[test]
fn server_packets_both_headers() {
    for (p, kind, body) in server_cases() {
        for h in [SizeField::U8, SizeField::U16] {
            let bytes = framed(h, kind, &body);
            assert_eq!(p.encode(h), bytes, "{p:?} {h:?}");
            assert_eq!(ServerPacket::decode(&bytes, h), Ok(p.clone()));
        }
    }
}

#[test]
fn totals_match_the_protocol_table() {
    // (packet, total with the u8 header) from course-protocol.md.
    let server: [(ServerPacket, usize); 8] = [
        (
            ServerPacket::LoginInfo {
                id: 0,
                hp: 0,
                max_hp: 0,
                exp: 0,
                level: 0,
                x: 0,
                y: 0,
            },
            26,
        ),
        (
            ServerPacket::AddObject {
                id: 0,
                x: 0,
                y: 0,
                name: [0; 20],
            },
            30,
        ),
        (ServerPacket::RemoveObject { id: 0 }, 6),
        (
            ServerPacket::MoveObject {
                id: 0,
                x: 0,
                y: 0,
                move_time: 0,
            },
            14,
        ),
        (
            ServerPacket::Chat {
                id: 0,
                mess: vec![b'x'; 10],
            },
            16,
        ),
        (ServerPacket::LoginOk, 2),
        (ServerPacket::LoginFail, 2),
        (
            ServerPacket::StatChange {
                hp: 0,
                max_hp: 0,
                exp: 0,
                level: 0,
            },
            18,
        ),
    ];
    for (p, total) in server {
        assert_eq!(p.encode(SizeField::U8).len(), total, "{p:?}");
        assert_eq!(p.encode(SizeField::U16).len(), total + 1, "{p:?}");
    }
    let client: [(ClientPacket, usize); 6] = [
        (ClientPacket::Login { name: [0; 20] }, 22),
        (
            ClientPacket::Move {
                direction: Direction::Up,
                move_time: 0,
            },
            7,
        ),
        (
            ClientPacket::Chat {
                mess: vec![b'x'; CHAT_SIZE],
            },
            102,
        ),
        (ClientPacket::Attack, 2),
        (ClientPacket::Teleport, 2),
        (ClientPacket::Logout, 2),
    ];
    for (p, total) in client {
        assert_eq!(p.encode(SizeField::U8).len(), total, "{p:?}");
        assert_eq!(p.encode(SizeField::U16).len(), total + 1, "{p:?}");
    }
}

#[test]
fn names_are_nul_padded_and_keep_a_nul() {
    assert_eq!(name("abc"), ABC);
    let long = name("abcdefghijklmnopqrstuvwxyz");
    assert_eq!(&long[..19], b"abcdefghijklmnopqrs");
    assert_eq!(long[19], 0);
    assert_eq!(cport_mmo_proto::name_str(&long), "abcdefghijklmnopqrs");
}

#[test]
fn client_decoder_refuses_bad_packets() {
    let u8h = SizeField::U8;
    let bad: Vec<(Vec<u8>, DecodeError)> = vec![
        (vec![], DecodeError::Short { len: 0 }),
        (vec![2], DecodeError::Short { len: 1 }),
        (
            vec![3, 3],
            DecodeError::SizeMismatch {
                declared: 3,
                actual: 2,
            },
        ),
        (vec![2, 6], DecodeError::UnknownType(6)),
        (vec![2, 255], DecodeError::UnknownType(255)),
        (
            vec![8, 1, 0, 0, 0, 0, 0, 0],
            DecodeError::WrongSize {
                kind: 1,
                size: 8,
                expected: 7,
            },
        ),
        (
            vec![6, 1, 0, 0, 0, 0],
            DecodeError::WrongSize {
                kind: 1,
                size: 6,
                expected: 7,
            },
        ),
        (
            vec![3, 0, b'a'],
            DecodeError::WrongSize {
                kind: 0,
                size: 3,
                expected: 22,
            },
        ),
        (
            vec![3, 4, 0],
            DecodeError::WrongSize {
                kind: 4,
                size: 3,
                expected: 2,
            },
        ),
        (vec![7, 1, 4, 0, 0, 0, 0], DecodeError::BadDirection(4)),
        (vec![7, 1, 255, 0, 0, 0, 0], DecodeError::BadDirection(255)),
        (vec![2, 2], DecodeError::BadChatSize(0)),
        (
            {
                let mut v = vec![103, 2];
                v.extend_from_slice(&[b'x'; 101]);
                v
            },
            DecodeError::BadChatSize(101),
        ),
    ];
    for (bytes, err) in bad {
        assert_eq!(ClientPacket::decode(&bytes, u8h), Err(err), "{bytes:?}");
    }
    // u16 header: the same checks, one byte further.
    let u16h = SizeField::U16;
    assert_eq!(
        ClientPacket::decode(&[3, 0, 2], u16h),
        Err(DecodeError::BadChatSize(0))
    );
    assert_eq!(
        ClientPacket::decode(&[8, 0, 1, 9, 0, 0, 0, 0], u16h),
        Err(DecodeError::BadDirection(9))
    );
    assert_eq!(
        ClientPacket::decode(&[2, 0, 1], u16h),
        Err(DecodeError::SizeMismatch {
            declared: 2,
            actual: 3
        })
    );
    // Server types are not client types (SC_ADD_OBJECT's 3 is CS_ATTACK: wrong size).
    let add = ServerPacket::RemoveObject { id: 1 }.encode(u8h);
    assert_eq!(
        ClientPacket::decode(&add, u8h),
        Err(DecodeError::WrongSize {
            kind: 4,
            size: 6,
            expected: 2
        })
    );
}
