//! The crate's structure, checked: its modules import each other without
//! cycles, and imports point down the layers (`edge` → `app` → `domain` →
//! `patterns` → `infra`; see the crate docs). A node is a module of a layer
//! (`domain::balance`) or `app`; an edge is a `crate::…` path to another
//! one, outside comments and test code. A reader can follow a module's
//! imports down without climbing back up.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The layers, lowest first.
const LAYERS: [&str; 5] = ["infra", "patterns", "domain", "app", "edge"];

fn layer_of(node: &str) -> usize {
    let layer = node.split("::").next().unwrap_or("");
    LAYERS.iter().position(|l| *l == layer).unwrap()
}

/// The node a `crate::…` path names: `layer::module`, or `app`.
fn node_of(path: &str) -> Option<String> {
    let parts: Vec<String> = path
        .split("::")
        .map(|p| {
            p.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    match parts.first().map(String::as_str) {
        Some("app") => Some("app".to_owned()),
        Some(layer @ ("infra" | "patterns" | "domain" | "edge")) => Some(format!(
            "{layer}::{}",
            parts.get(1).filter(|m| !m.is_empty())?
        )),
        _ => None,
    }
}

fn sources(src: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// Code lines of a file: no comments, no test module.
fn code(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or("").to_owned();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(str::to_owned)
        .collect()
}

/// The import graph of the crate's modules.
fn graph(src: &Path) -> Graph {
    let mut g = Graph::new();
    for file in sources(src) {
        let rel = file
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let rel = rel.trim_end_matches(".rs");
        let node = match rel.split('/').collect::<Vec<_>>().as_slice() {
            ["lib"] => continue,
            ["app"] => "app".to_owned(),
            [_layer, "mod"] => continue,
            [layer, module, ..] => format!("{layer}::{module}"),
            other => panic!("a file outside the layers: {other:?}"),
        };
        let edges = g.entry(node.clone()).or_default();
        for line in code(&file) {
            for part in line.split("crate::").skip(1) {
                if let Some(to) = node_of(part)
                    && to != node
                {
                    edges.insert(to);
                }
            }
        }
    }
    g
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        for w in &s.g[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_import_cycles() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(g.len() > 25, "the crate's modules were found: {}", g.len());
    assert!(
        g.values().map(BTreeSet::len).sum::<usize>() > 60,
        "imports were found"
    );
    let found = cycles(&g);
    assert!(found.is_empty(), "import cycles: {found:?}");
}

/// Imports up the layers, `from -> to`.
fn upward(g: &Graph) -> Vec<String> {
    let mut up = Vec::new();
    for (from, edges) in g {
        for to in edges {
            if layer_of(to) > layer_of(from) {
                up.push(format!("{from} -> {to}"));
            }
        }
    }
    up
}

#[test]
fn imports_point_down_the_layers() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let up = upward(&g);
    assert!(up.is_empty(), "imports up the layers: {up:?}");
}

/// Inside the crate, modules are named by their layer: the root's
/// re-exports (`crate::balance`) are for the crate's users, and would hide
/// an import from the two checks above.
#[test]
fn no_root_aliases_inside_the_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let aliases = [
        "audit",
        "balance",
        "cloudwatch",
        "fraud",
        "health",
        "invalidation",
        "money",
        "node_metrics",
        "profile",
        "realtime",
        "sessions",
        "transactions",
        "warming",
        "auth",
        "events",
        "http",
        "routes",
        "aws",
        "breaker",
        "config",
        "connection",
        "db",
        "keys",
        "secrets",
        "telemetry",
        "tls",
        "cache_aside",
        "pubsub",
        "ratelimit",
    ];
    let mut found = Vec::new();
    for file in sources(&src) {
        if file.ends_with("lib.rs") {
            continue;
        }
        for line in code(&file) {
            for part in line.split("crate::").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if aliases.contains(&name.as_str()) {
                    found.push(format!("{}: crate::{name}", file.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:?}");
}

/// The broken variants through the same checks: one import back up (the
/// configuration naming a domain module, as it once did) closes a cycle
/// and points up the layers, and both checks report it.
#[test]
fn an_import_back_up_is_caught() {
    let mut g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    g.get_mut("infra::config")
        .unwrap()
        .insert("domain::warming".into());
    let found = cycles(&g);
    assert!(
        found.iter().any(|c| c.contains(&"infra::config".to_owned())
            && c.contains(&"domain::warming".to_owned())),
        "{found:?}"
    );
    assert!(
        upward(&g).contains(&"infra::config -> domain::warming".to_owned()),
        "{:?}",
        upward(&g)
    );
}
