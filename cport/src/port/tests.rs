//! The port above the backend interface, on a modelled kernel (`sys::model`): the operation
//! table's lanes, short-send continuation and cancel, and the response to kernel failures,
//! with the test deciding when and how each operation completes.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Port;
use crate::op::{Aborted, Op};
use crate::sys::model::{Call, Kind, Model};
use crate::sys::AnyDriver;
use crate::Completion;

fn model_port() -> (Port, Arc<Model>) {
    let model = Arc::new(Model::default());
    let port = Port::with_driver(AnyDriver::Model(model.clone()), 1);
    (port, model)
}

fn next(port: &Port) -> Completion {
    port.get(Some(Duration::from_secs(10)))
        .expect("port open")
        .expect("a completion within 10 s")
}

/// A receive buffer with `cap` bytes of capacity, all initialised (the model writes none).
fn recv_buf(cap: usize) -> Vec<u8> {
    let mut v = vec![0u8; cap];
    v.clear();
    v
}

/// The pushes in `calls`: (token, kind, len).
fn pushes(calls: &[Call]) -> Vec<(u64, Kind, usize)> {
    calls
        .iter()
        .filter_map(|c| match *c {
            Call::Push {
                token, kind, len, ..
            } => Some((token, kind, len)),
            _ => None,
        })
        .collect()
}

#[test]
fn receives_of_one_socket_go_to_the_kernel_one_at_a_time_in_start_order() {
    let (port, model) = model_port();
    let (a, _b) = UnixStream::pair().unwrap();
    let sock = port.associate(a, 9).unwrap();
    assert!(matches!(model.take_calls()[..], [Call::Register { .. }]));
    for (user, cap) in [(1, 10), (2, 20), (3, 30)] {
        sock.recv(recv_buf(cap), user);
    }
    let mut expect_cap = 10;
    for user in 1..=3 {
        let p = pushes(&model.take_calls());
        assert_eq!(p.len(), 1, "only the lane's front is in the kernel: {p:?}");
        let (token, kind, len) = p[0];
        assert_eq!((kind, len), (Kind::Recv, expect_cap));
        model.complete(token, 4);
        let c = next(&port);
        assert_eq!((c.key, c.user, c.result.unwrap()), (9, user, 4));
        let Op::Recv(buf) = c.op else {
            panic!("{:?}", c.op)
        };
        assert_eq!(buf.len(), 4);
        expect_cap += 10;
    }
    assert!(model.take_calls().is_empty());
    assert_eq!(port.stats().in_flight, 0);
}

#[test]
fn a_short_stream_send_is_continued_with_the_rest_and_completes_once_whole() {
    let (port, model) = model_port();
    let (a, _b) = UnixStream::pair().unwrap();
    let sock = port.associate(a, 1).unwrap();
    model.take_calls();
    sock.send(vec![1u8; 100], 7);
    sock.send(vec![2u8; 10], 8);
    let p = pushes(&model.take_calls());
    assert_eq!(p.len(), 1, "the second send waits behind the first: {p:?}");
    let (token, _, len) = p[0];
    assert_eq!(len, 100);
    model.complete(token, 40);
    // The continuation: the same operation, the 60 bytes left.
    let deadline = Instant::now() + Duration::from_secs(10);
    let p = loop {
        assert!(port.get(Some(Duration::from_millis(1))).unwrap().is_none());
        let p = pushes(&model.take_calls());
        if !p.is_empty() || Instant::now() > deadline {
            break p;
        }
    };
    assert_eq!(p, [(token, Kind::Send, 60)]);
    model.complete(token, 60);
    let c = next(&port);
    assert_eq!((c.user, c.result.unwrap()), (7, 100));
    assert!(matches!(c.op, Op::Send(ref b) if b.len() == 100));
    // Only now the second send reaches the kernel.
    let p = pushes(&model.take_calls());
    assert_eq!(p.len(), 1);
    model.complete(p[0].0, 10);
    let c = next(&port);
    assert_eq!((c.user, c.result.unwrap()), (8, 10));
}

#[test]
fn cancel_aborts_queued_operations_at_once_and_the_one_in_flight_through_the_kernel() {
    let (port, model) = model_port();
    let (a, _b) = UnixStream::pair().unwrap();
    let sock = port.associate(a, 1).unwrap();
    model.take_calls();
    for user in 1..=3 {
        sock.send(vec![0u8; 8], user);
    }
    let front = pushes(&model.take_calls())[0].0;
    sock.cancel();
    assert_eq!(model.take_calls(), [Call::Cancel { token: front }]);
    // The two that never reached the kernel complete aborted, with their buffers, at once.
    for user in [2, 3] {
        let c = next(&port);
        assert_eq!(c.user, user);
        assert!(c.result.is_aborted());
        assert!(matches!(c.op, Op::Send(ref b) if b.len() == 8));
    }
    assert_eq!(
        port.stats().in_flight,
        1,
        "the front one is still the kernel's"
    );
    model.complete(front, -libc::ECANCELED);
    let c = next(&port);
    assert_eq!(c.user, 1);
    assert!(c.result.is_aborted());
    assert_eq!(port.stats().in_flight, 0);
    // The socket stays usable after a cancel.
    sock.send(vec![0u8; 3], 4);
    let p = pushes(&model.take_calls());
    assert_eq!(p.len(), 1);
}

#[test]
fn a_short_send_cancelled_during_its_continuation_completes_aborted_once() {
    let (port, model) = model_port();
    let (a, _b) = UnixStream::pair().unwrap();
    let sock = port.associate(a, 1).unwrap();
    model.take_calls();
    sock.send(vec![0u8; 100], 5);
    let token = pushes(&model.take_calls())[0].0;
    model.complete(token, 40);
    while pushes(&model.take_calls()).is_empty() {
        assert!(port.get(Some(Duration::from_millis(1))).unwrap().is_none());
    }
    sock.cancel();
    assert_eq!(model.take_calls(), [Call::Cancel { token }]);
    // The kernel sent 30 more before the cancel took: still short, so not continued.
    model.complete(token, 30);
    let c = next(&port);
    assert_eq!(c.user, 5);
    assert!(c.result.is_aborted(), "{:?}", c.result);
    assert!(pushes(&model.take_calls()).is_empty());
    assert!(port.get(Some(Duration::from_millis(20))).unwrap().is_none());
}

#[test]
fn a_socket_is_deregistered_only_after_its_last_operation_completed() {
    let (port, model) = model_port();
    let (a, _b) = UnixStream::pair().unwrap();
    let sock = port.associate(a, 1).unwrap();
    let sock_token = match model.take_calls()[..] {
        [Call::Register { sock }] => sock,
        ref other => panic!("{other:?}"),
    };
    sock.recv(recv_buf(8), 1);
    sock.recv(recv_buf(8), 2);
    let front = pushes(&model.take_calls())[0].0;
    drop(sock);
    assert_eq!(model.take_calls(), [Call::Cancel { token: front }]);
    let c = next(&port);
    assert_eq!(c.user, 2);
    assert!(c.result.is_aborted());
    assert_eq!(
        port.stats().sockets,
        1,
        "the kernel still has an operation of it"
    );
    model.complete(front, -libc::ECANCELED);
    let c = next(&port);
    assert_eq!(c.user, 1);
    assert_eq!(model.take_calls(), [Call::Deregister { sock: sock_token }]);
    assert_eq!(port.stats().sockets, 0);
}

#[test]
fn a_few_failed_kernel_waits_are_retried_and_counted() {
    let (port, model) = model_port();
    let (a, _b) = UnixStream::pair().unwrap();
    let sock = port.associate(a, 1).unwrap();
    sock.recv(recv_buf(8), 1);
    let token = pushes(&model.take_calls())[0].0;
    model.fail_waits(5, std::io::ErrorKind::Other);
    model.complete(token, 0);
    let c = next(&port);
    assert_eq!((c.user, c.result.unwrap()), (1, 0));
    assert_eq!(port.stats().wait_errors, 5);
    assert!(!port.is_shut_down());
}

#[test]
fn a_persistently_failing_kernel_wait_shuts_the_port_down() {
    let (port, model) = model_port();
    model.fail_waits(10_000, std::io::ErrorKind::Other);
    let t0 = Instant::now();
    assert!(
        port.get(Some(Duration::from_secs(30))).is_err(),
        "get answers Closed once the port gave up"
    );
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(port.is_shut_down());
    assert!(port.stats().wait_errors >= u64::from(super::inner::WAIT_FAILURE_LIMIT));
    assert!(port.post(0, 0, 0).is_err());
}
