//! The examples a new user writes first, run as programs and driven by real clients.
//! (Linux: they are run on the io_uring and epoll backends.)
#![cfg(target_os = "linux")]

use cport_testkit::examples::{chat_relays_lines_to_the_others, example};

#[test]
fn port_chat_on_uring() {
    chat_relays_lines_to_the_others(example("chat"), &["--addr", "127.0.0.1:0"], "uring");
}

#[test]
fn port_chat_on_epoll() {
    chat_relays_lines_to_the_others(example("chat"), &["--addr", "127.0.0.1:0"], "epoll");
}
