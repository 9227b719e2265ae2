//! The floors of `observer/src` (../shared/ARCHITECTURE.md): imports point one way, `sys` -> `model` -> `view`,
//! with `table` beside the view and `cmd` above them all. Each source file's `crate::` paths, in `use` groups
//! too, are checked against what its floor may import.

use std::{fs, path::Path};

/// What each floor may import besides itself.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("sys", &[]),
    ("model", &["sys"]),
    ("view", &["model", "sys"]),
    ("table", &["sys", "view"]),
    ("cli", &["sys", "model", "table"]),
    ("cmd", &["sys", "model", "view", "table", "cli"]),
    ("lib", &["sys", "model", "view", "table", "cli", "cmd"]),
    ("main", &["sys", "model", "view", "table", "cli", "cmd"]),
];

/// Test modules that read a lower floor's output through a view, with the reason.
const TEST_EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "model/link.rs",
    "view",
    "the linker's tests state the expected socket side as the line prints it (`LISTEN ... synq 1 accept 0/4 \
     LISTEN→SYN_RECV→ESTABLISHED`), the readable form of a whole SocketLink",
)];

/// The floor of a file under `src/`: its first directory, or its stem at the top.
fn floor_of(rel: &Path) -> String {
    let mut parts = rel.components();
    let first = parts.next().expect("a path").as_os_str().to_string_lossy().into_owned();
    if parts.next().is_some() {
        first
    } else {
        first.trim_end_matches(".rs").to_owned()
    }
}

/// The top-level modules named by `crate::` paths in `code`, with the line of each.
fn imports(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at + "crate::".len();
        let line = code[..start].matches('\n').count() + 1;
        // A path segment must not be the tail of another name (`my_crate::`).
        let before = code[..from + at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            from = start;
            continue;
        }
        if bytes.get(start) == Some(&b'{') {
            // A group: its top-level entries, separated by commas outside nested braces.
            let mut depth = 0;
            let mut entry = String::new();
            for c in code[start + 1..].chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(head(&entry).map(|h| (line, h)));
                        entry.clear();
                        continue;
                    }
                    _ => {}
                }
                entry.push(c);
            }
            out.extend(head(&entry).map(|h| (line, h)));
        } else {
            out.extend(head(&code[start..]).map(|h| (line, h)));
        }
        from = start;
    }
    out
}

/// The first path segment of a `use` entry.
fn head(entry: &str) -> Option<String> {
    let name: String = entry
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// Code without its comments' lines (doc links name other floors legitimately).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| if l.trim_start().starts_with("//") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("reading src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut wrong = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src");
        let floor = floor_of(rel);
        let Some((_, allowed)) = MAY_IMPORT.iter().find(|(f, _)| *f == floor) else {
            wrong.push(format!("{}: floor `{floor}` is not in the table", rel.display()));
            continue;
        };
        let text = fs::read_to_string(&path).expect("reading a source file");
        let code = code_of(&text);
        let tests_from = code.find("#[cfg(test)]").unwrap_or(code.len());
        for (line, target) in imports(&code) {
            if target == floor || allowed.contains(&target.as_str()) {
                continue;
            }
            let offset = code.lines().take(line - 1).map(|l| l.len() + 1).sum::<usize>();
            let excepted = offset >= tests_from
                && TEST_EXCEPTIONS
                    .iter()
                    .any(|(file, to, _)| Path::new(file) == rel && *to == target);
            if !excepted {
                wrong.push(format!("{}:{line}: `{floor}` imports `{target}`", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the floors:\n{}", wrong.join("\n"));
}

#[test]
fn the_scanner_sees_paths_and_groups() {
    let code = "use crate::{\n    model::a::{B, C},\n    view::d,\n};\nfn f() { crate::sys::x(); other_crate::no(); }";
    let found: Vec<String> = imports(code).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, ["model", "view", "sys"]);
    assert_eq!(floor_of(Path::new("model/flows/mod.rs")), "model");
    assert_eq!(floor_of(Path::new("cli.rs")), "cli");
}
