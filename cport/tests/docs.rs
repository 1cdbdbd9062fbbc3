//! Checks of the crate's documentation that a doc test cannot make: what the crate docs must
//! name and link, and a trap no example may teach. (The examples themselves run as doc
//! tests.)

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crate docs point a reader who wants sessions and framing to the server layer by its
/// crate name, with a link that works on docs.rs.
#[test]
fn crate_docs_name_and_link_the_server_crate() {
    let lib = std::fs::read_to_string(crate_dir().join("src/lib.rs")).unwrap();
    let docs: String = lib
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        docs.contains("[`cport-server`](https://docs.rs/cport-server)"),
        "the crate docs must name and link `cport-server`"
    );
    assert!(
        !docs.contains("The `cport` server layer"),
        "the crate docs speak of a server layer without naming its crate"
    );
}

/// A send hands back `SendBuf::Bytes` or `SendBuf::Vectored` as often as `SendBuf::Vec`
/// (static strings and broadcasts are `Bytes`): code that users copy must not unwrap
/// `SendBuf::into_vec`. Checked in every source file and example of the crate, doc comments
/// included.
#[test]
fn no_source_or_example_unwraps_a_sent_buffer() {
    let mut files = Vec::new();
    rust_files(&crate_dir().join("src"), &mut files);
    rust_files(&crate_dir().join("examples"), &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Joined so that a call split over lines (`.into_vec()\n.unwrap()`) is found too.
        let flat: String = text
            .lines()
            .map(|l| {
                l.trim_start()
                    .trim_start_matches("//!")
                    .trim_start_matches("///")
            })
            .map(str::trim)
            .collect();
        for bad in ["into_vec().unwrap()", "into_vec().expect("] {
            if flat.contains(bad) {
                found.push(format!("{}: {bad}", f.display()));
            }
        }
    }
    assert!(found.is_empty(), "unwrapped send buffers: {found:?}");
}
