//! The workspace's layout rules, checked on the source itself:
//!
//! * no import circle between the modules of a crate's `src/` (module A uses B and B uses A,
//!   directly or through a chain) — a `mod` line and a `pub use` re-export are not uses, and
//!   test modules (`#[cfg(test)]`, `#[cfg(loom)]`) do not count;
//! * no file in a crate's `src/` over 700 lines, unless a comment in its first 20 lines starts
//!   with `Why one file:` and says why.
//!
//! The parse is textual (paths after `use`, `crate::`, `super::`, `self::` and a declared child
//! module's name), which is enough for this code base's style; a re-export is followed to the
//! module that defines the item.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 700;
const REASON: &str = "Why one file:";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The member folders listed in the root Cargo.toml's `members = [...]`.
fn members(root: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let start = text.find("members").expect("a members list");
    let open = start + text[start..].find('[').unwrap();
    let close = open + text[open..].find(']').unwrap();
    text[open + 1..close]
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .filter(|s| !s.is_empty())
        .map(|s| root.join(s))
        .collect()
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// (compilation unit, module path) of a file under `src/`: `lib`/`main` for the crate's own
/// root, `bin:NAME` for a binary under `src/bin/`.
fn unit_and_module(src: &Path, file: &Path) -> (String, Vec<String>) {
    let rel: Vec<String> = file
        .strip_prefix(src)
        .unwrap()
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let (unit, rest) = if rel[0] == "bin" {
        let name = rel[1].trim_end_matches(".rs").to_string();
        let rest = if rel.len() == 2 {
            Vec::new()
        } else {
            rel[2..].to_vec()
        };
        (format!("bin:{name}"), rest)
    } else {
        ("src".to_string(), rel)
    };
    let mut m: Vec<String> = rest;
    if let Some(last) = m.pop() {
        let stem = last.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            m.push(stem.to_string());
        }
    }
    (unit, m)
}

/// The text without comments, string contents and test-only modules.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"', '\'', '{'); lifetimes ('a) fall through.
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            let end = if b[i + 1] == b'\\' {
                text[i + 3..].find('\'').map_or(b.len(), |e| i + 3 + e + 1)
            } else {
                end
            };
            out.push_str("' '");
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    strip_test_modules(&out)
}

/// Removes `#[cfg(...test...)]`/`#[cfg(...loom...)]` modules (inline ones with their braces).
fn strip_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(") {
        let attr_end = at + rest[at..].find(']').unwrap_or(rest.len() - at);
        let attr = &rest[at..attr_end];
        let after = rest[attr_end + 1..].trim_start();
        let after = after.strip_prefix("pub(crate) ").unwrap_or(after);
        let is_test = (attr.contains("test") || attr.contains("loom")) && !attr.contains("not(");
        if is_test && after.starts_with("mod ") {
            out.push_str(&rest[..at]);
            let body = &rest[attr_end..];
            let semi = body.find(';');
            let brace = body.find('{');
            match (brace, semi) {
                (Some(bp), s) if s.is_none_or(|s| bp < s) => {
                    let mut depth = 0;
                    let mut end = body.len();
                    for (k, ch) in body[bp..].char_indices() {
                        match ch {
                            '{' => depth += 1,
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    end = bp + k + 1;
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    rest = &body[end..];
                }
                (_, Some(s)) => rest = &body[s + 1..],
                _ => rest = "",
            }
        } else {
            out.push_str(&rest[..attr_end]);
            rest = &rest[attr_end..];
        }
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    expand_into(&tree, &mut Vec::new(), &mut out);
    out
}

fn expand_into(t: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Some(open) = t.find('{') {
        let head = &t[..open];
        let inner = &t[open + 1..t.rfind('}').unwrap_or(t.len())];
        let segs: Vec<String> = head
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let n = segs.len();
        prefix.extend(segs);
        let mut depth = 0;
        let mut start = 0;
        for (k, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_into(&inner[start..k], prefix, out);
                    start = k + 1;
                }
                _ => {}
            }
        }
        expand_into(&inner[start..], prefix, out);
        prefix.truncate(prefix.len() - n);
    } else if !t.is_empty() {
        let t = t.split(" as ").next().unwrap_or(t);
        let t = t
            .split("as")
            .next()
            .filter(|_| t.contains("::as"))
            .unwrap_or(t);
        let mut p = prefix.clone();
        p.extend(t.split("::").filter(|s| !s.is_empty()).map(String::from));
        if p.last().is_some_and(|l| l == "self") {
            p.pop();
        }
        out.push(p);
    }
}

struct Module {
    file: PathBuf,
    code: String,
    children: BTreeSet<String>,
    /// `pub use` re-exports: name → the path it stands for (absolute).
    reexports: BTreeMap<String, Vec<String>>,
}

/// `path` (as written in module `at`) made absolute, or `None` for an external crate's path.
fn absolute(at: &[String], path: &[String], children: &BTreeSet<String>) -> Option<Vec<String>> {
    let first = path.first()?;
    match first.as_str() {
        "crate" => Some(path[1..].to_vec()),
        "self" => Some(at.iter().chain(&path[1..]).cloned().collect()),
        "super" => {
            let mut base = at.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            Some(base.into_iter().chain(rest.iter().cloned()).collect())
        }
        c if children.contains(c) => Some(at.iter().chain(path).cloned().collect()),
        _ => None,
    }
}

/// The module an absolute path lands in, following re-exports.
fn resolve(mods: &BTreeMap<Vec<String>, Module>, path: &[String], depth: u32) -> Vec<String> {
    let mut n = path.len();
    while n > 0 && !mods.contains_key(&path[..n]) {
        n -= 1;
    }
    let m = path[..n].to_vec();
    if depth < 8 && n < path.len() {
        if let Some(target) = mods[&m].reexports.get(&path[n]) {
            let mut t = target.clone();
            t.extend(path[n + 1..].iter().cloned());
            return resolve(mods, &t, depth + 1);
        }
    }
    m
}

/// Every `use` statement: (is a re-export, its text after `use`).
fn use_statements(code: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let before = rest[..at].trim_end();
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let end = at + rest[at..].find(';').unwrap_or(rest.len() - at);
        out.push((public, rest[at + 3..end].trim().to_string()));
        rest = &rest[end..];
    }
    out
}

fn find_word(s: &str, w: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(k) = s[from..].find(w) {
        let at = from + k;
        let ok_before = at == 0 || !is_ident(s[..at].chars().next_back().unwrap());
        let ok_after = s[at + w.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_whitespace());
        if ok_before && ok_after {
            return Some(at);
        }
        from = at + w.len();
    }
    None
}

/// Paths written in code outside `use` lines: `crate::a::b`, `super::x`, `self::y`, `child::z`.
fn code_paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_ident(chars[i]) && (i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':') {
            let mut j = i;
            let mut segs = Vec::new();
            loop {
                let s = j;
                while j < chars.len() && is_ident(chars[j]) {
                    j += 1;
                }
                segs.push(chars[s..j].iter().collect::<String>());
                if j + 2 < chars.len()
                    && chars[j] == ':'
                    && chars[j + 1] == ':'
                    && is_ident(chars[j + 2])
                {
                    j += 2;
                } else {
                    break;
                }
            }
            let first = segs[0].as_str();
            if segs.len() > 1
                && (matches!(first, "crate" | "super" | "self") || children.contains(first))
            {
                out.push(segs);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn child_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let l = line.trim();
        let l = l
            .strip_prefix("pub(crate) ")
            .or_else(|| l.strip_prefix("pub "))
            .unwrap_or(l);
        if let Some(name) = l.strip_prefix("mod ") {
            let name: String = name.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The import circles of one compilation unit, each as its modules' files.
fn circles(files: &[(Vec<String>, PathBuf)]) -> Vec<Vec<PathBuf>> {
    let mut mods: BTreeMap<Vec<String>, Module> = BTreeMap::new();
    for (m, f) in files {
        let code = code_of(&fs::read_to_string(f).unwrap());
        let children = child_modules(&code);
        mods.insert(
            m.clone(),
            Module {
                file: f.clone(),
                code,
                children,
                reexports: BTreeMap::new(),
            },
        );
    }
    // Only modules that are really declared (a file left over under src/ is not a module).
    let keys: Vec<Vec<String>> = mods.keys().cloned().collect();
    for k in &keys {
        let mut reexports = BTreeMap::new();
        let m = &mods[k];
        for (public, text) in use_statements(&m.code) {
            if !public {
                continue;
            }
            for p in expand_use(&text) {
                if let (Some(abs), Some(last)) = (absolute(k, &p, &m.children), p.last()) {
                    reexports.insert(last.clone(), abs);
                }
            }
        }
        mods.get_mut(k).unwrap().reexports = reexports;
    }
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for k in &keys {
        let m = &mods[k];
        let mut paths = Vec::new();
        let mut code_wo_uses = m.code.clone();
        for (public, text) in use_statements(&m.code) {
            code_wo_uses = code_wo_uses.replacen(&text, "", 1);
            if !public {
                paths.extend(expand_use(&text));
            }
        }
        paths.extend(code_paths(&code_wo_uses, &m.children));
        for p in paths {
            let Some(abs) = absolute(k, &p, &m.children) else {
                continue;
            };
            let target = resolve(&mods, &abs, 0);
            if &target != k && mods.contains_key(&target) {
                edges.entry(k.clone()).or_default().insert(target);
            }
        }
    }
    // Strongly connected components (Tarjan) of more than one module.
    struct T<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        next: usize,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit(t: &mut T, v: &Vec<String>) {
        t.index.insert(v.clone(), t.next);
        t.low.insert(v.clone(), t.next);
        t.next += 1;
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        let next: Vec<Vec<String>> = t
            .edges
            .get(v)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for w in next {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let l = t.low[&w].min(t.low[v]);
                t.low.insert(v.clone(), l);
            } else if t.on.contains(&w) {
                let l = t.index[&w].min(t.low[v]);
                t.low.insert(v.clone(), l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for k in &keys {
        if !t.index.contains_key(k) {
            visit(&mut t, k);
        }
    }
    t.out
        .into_iter()
        .map(|c| c.iter().map(|m| mods[m].file.clone()).collect())
        .collect()
}

/// Every unit's files, crate by crate: (member, unit) → [(module path, file)].
type Units = BTreeMap<(PathBuf, String), Vec<(Vec<String>, PathBuf)>>;

fn units() -> Units {
    let root = workspace_root();
    let mut units: Units = BTreeMap::new();
    for member in members(&root) {
        let src = member.join("src");
        let mut files = Vec::new();
        rs_files(&src, &mut files);
        for f in files {
            let (unit, m) = unit_and_module(&src, &f);
            units
                .entry((member.clone(), unit))
                .or_default()
                .push((m, f));
        }
    }
    units
}

fn rel(p: &Path) -> String {
    p.strip_prefix(workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

#[test]
fn no_import_circle_between_the_modules_of_a_crate() {
    let mut found = Vec::new();
    for files in units().values() {
        for c in circles(files) {
            found.push(c.iter().map(|p| rel(p)).collect::<Vec<_>>().join(" ↔ "));
        }
    }
    assert!(
        found.is_empty(),
        "import circles (modules that use each other, directly or through a chain):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn no_source_file_over_700_lines_without_a_reason_at_its_top() {
    let mut long = Vec::new();
    for files in units().values() {
        for (_, f) in files {
            let text = fs::read_to_string(f).unwrap();
            let lines = text.lines().count();
            let reason = text.lines().take(20).any(|l| {
                l.trim_start()
                    .trim_start_matches('/')
                    .trim_start_matches('!')
                    .trim_start()
                    .starts_with(REASON)
            });
            if lines > MAX_LINES && !reason {
                long.push(format!("{} ({lines} lines)", rel(f)));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines with no `{REASON}` comment in their first 20 lines:\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_checker_sees_a_circle_and_follows_a_reexport() {
    let dir = std::env::temp_dir().join(format!("cport-layout-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("src/port")).unwrap();
    let write = |p: &str, t: &str| fs::write(dir.join(p), t).unwrap();
    write("src/lib.rs", "mod port;\npub use port::Port;\n");
    write(
        "src/port/mod.rs",
        "mod a;\nmod b;\npub use a::A;\npub struct Port;\n#[cfg(test)]\nmod tests { use super::b::B; }\n",
    );
    write(
        "src/port/a.rs",
        "use super::b::{B, other::{X}};\npub struct A;\n",
    );
    write(
        "src/port/b.rs",
        "// use crate::port::a::A;\npub struct B(crate::port::A);\n",
    );
    let src = dir.join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let files: Vec<_> = files
        .into_iter()
        .map(|f| (unit_and_module(&src, &f).1, f))
        .collect();
    let found = circles(&files);
    assert_eq!(found.len(), 1, "{found:?}");
    let names: BTreeSet<String> = found[0]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["a.rs".to_string(), "b.rs".to_string()])
    );
    // Without b's use of A (through the re-export in port/mod.rs) there is no circle.
    write("src/port/b.rs", "pub struct B;\n");
    assert!(circles(&files).is_empty());
    let _ = fs::remove_dir_all(&dir);
}
