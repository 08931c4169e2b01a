//! The layering rule of `lib.rs`, checked: no module imports `crate::` items from its own
//! layer or one above it.

use std::{collections::BTreeSet, path::Path};

/// Each top-level module's layer, as `lib.rs` lists them.
const LAYERS: &[(&str, u32)] = &[
    ("config", 1),
    ("netlink", 1),
    ("model", 2),
    ("registry", 3),
    ("health", 3),
    ("control", 4),
    ("dataplane", 5),
    ("neighbour", 5),
    ("reconcile", 6),
    ("sysctls", 6),
    ("l4", 7),
    ("proxy", 7),
    ("mesh", 7),
    ("status", 8),
    ("metrics", 9),
    ("admin", 10),
    ("agent", 11),
    ("layers", 12),
];

fn layer(module: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .unwrap_or_else(|| panic!("module `{module}` has no layer: add it to lib.rs and here"))
        .1
}

/// The top-level modules `text` names through `crate::` (in paths and `use` trees).
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(tree) = rest.strip_prefix('{') {
            // `crate::{a::x, b, c::{..}}`: the names at depth 0.
            let mut depth = 0;
            let mut name = String::new();
            for ch in tree.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(std::mem::take(&mut name));
                    }
                    _ if depth == 0 => name.push(ch),
                    _ => {}
                }
            }
            found.insert(name);
        } else {
            found.insert(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    found
        .into_iter()
        .map(|n| n.trim().split("::").next().unwrap_or("").trim().to_owned())
        .filter(|n| !n.is_empty() && n != "self")
        .collect()
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_its_own_layer_or_one_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    for path in all {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer(module);
        for imported in imports(&std::fs::read_to_string(&path).unwrap()) {
            if imported != module && layer(&imported) >= own {
                wrong.push(format!(
                    "{}: {module} ({own}) imports {imported}",
                    rel.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn imports_are_found_in_paths_and_use_trees() {
    let text = "use crate::{config::X, model::{A, B}, registry};\nlet x = crate::health::y(); // crate::agent";
    let names: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(names, ["config", "health", "model", "registry"]);
}
