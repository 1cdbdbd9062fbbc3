//! The example a new user writes first on the server layer, run as a program and driven by
//! real clients (on Linux's two backends).
#![cfg(target_os = "linux")]

use cport_testkit::examples::{chat_relays_lines_to_the_others, example};

#[test]
fn server_chat_on_uring() {
    chat_relays_lines_to_the_others(example("server_chat"), &["127.0.0.1:0"], "uring");
}

#[test]
fn server_chat_on_epoll() {
    chat_relays_lines_to_the_others(example("server_chat"), &["127.0.0.1:0"], "epoll");
}
