//! The crate's layers, as `docs/ARCHITECTURE.md` ("Layers") draws them,
//! held true: every `crate::<module>` a source file names (outside
//! comments) is in a strictly lower layer than the file's own top-level
//! module, every top-level module is in the table, and inside a module
//! directory the files' `super::<file>` imports form no circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// module -> layer, from the "Layers" table of docs/ARCHITECTURE.md.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let section = doc
        .split("\n## Layers")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a \"## Layers\" section");
    let section = section.split("\n## ").next().unwrap_or("");
    let mut out = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else {
            continue;
        };
        for m in cells.get(2).unwrap_or(&"").split('`').skip(1).step_by(2) {
            out.insert(m.to_string(), layer);
        }
    }
    assert!(out.len() > 5, "the layer table parsed: {out:?}");
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text without `//` comments (line and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules named after `crate::` (also inside `use crate::{a, b::c}`).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            // Top level of the group only: `a::{x, y}` inner braces name a's items.
            let mut depth = 0;
            let mut item = String::new();
            for ch in inner.chars().chain(std::iter::once(',')) {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let name = ident(item.trim());
                        if !name.is_empty() {
                            out.insert(name);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(ch);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_import_runs_from_a_higher_layer_to_a_lower_one() {
    let layers = layers();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        seen.insert(top.clone());
        let Some(&mine) = layers.get(&top) else {
            wrong.push(format!(
                "src/{}: module `{top}` is not in the layer table",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for r in crate_refs(&code(&text)) {
            if r == top {
                continue;
            }
            match layers.get(&r) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => wrong.push(format!(
                    "src/{}: `{top}` (layer {mine}) imports `{r}` (layer {theirs})",
                    rel.display()
                )),
                None => wrong.push(format!(
                    "src/{}: imports `{r}`, which is not in the layer table",
                    rel.display()
                )),
            }
        }
    }
    for m in layers.keys() {
        if !seen.contains(m) {
            wrong.push(format!("the layer table names `{m}`, which is not a module of src/"));
        }
    }
    assert!(wrong.is_empty(), "layers broken:\n{}", wrong.join("\n"));
}

#[test]
fn no_two_files_of_a_module_import_each_other() {
    let src = root().join("src");
    let mut circles = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let dir = e.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        // file stem -> the sibling files it names through `super::`.
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stems = BTreeSet::new();
        for f in std::fs::read_dir(&dir).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                stems.insert(p.file_stem().unwrap().to_string_lossy().to_string());
            }
        }
        for stem in &stems {
            if stem == "mod" {
                continue;
            }
            let text = code(&std::fs::read_to_string(dir.join(format!("{stem}.rs"))).unwrap());
            let mut names = BTreeSet::new();
            for (i, _) in text.match_indices("super::") {
                let rest = &text[i + "super::".len()..];
                let groups: Vec<String> = if let Some(g) = rest.strip_prefix('{') {
                    g[..g.find('}').unwrap_or(g.len())]
                        .split(',')
                        .map(|x| x.trim().split("::").next().unwrap_or("").to_string())
                        .collect()
                } else {
                    vec![
                        rest.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect(),
                    ]
                };
                for n in groups {
                    if stems.contains(&n) && n != *stem && n != "mod" {
                        names.insert(n);
                    }
                }
            }
            edges.insert(stem.clone(), names);
        }
        for (a, outs) in &edges {
            for b in outs {
                if edges.get(b).is_some_and(|back| back.contains(a)) && a < b {
                    circles.push(format!("{}: {a}.rs and {b}.rs import each other", dir.display()));
                }
            }
        }
    }
    assert!(circles.is_empty(), "{}", circles.join("\n"));
}
