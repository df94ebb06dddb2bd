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

/// A `#[cfg(test)]` attribute: the item it marks is test code.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string().trim() == "test")
    })
}

/// Every `crate::…` path in a file, outside test code: in `use` trees
/// (`use crate::{domain::a, infra::{b, c}}` names three), in expressions and
/// types, and in macro arguments (read as tokens). Comments are not code.
struct CratePaths(Vec<String>);

impl CratePaths {
    fn use_tree(&mut self, prefix: &str, tree: &syn::UseTree) {
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}::{name}")
            }
        };
        match tree {
            syn::UseTree::Path(p) => self.use_tree(&join(&p.ident.to_string()), &p.tree),
            syn::UseTree::Name(n) => self.push(join(&n.ident.to_string())),
            syn::UseTree::Rename(r) => self.push(join(&r.ident.to_string())),
            syn::UseTree::Glob(_) => self.push(prefix.to_owned()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn push(&mut self, path: String) {
        if let Some(rest) = path.strip_prefix("crate::") {
            self.0.push(rest.to_owned());
        }
    }
}

impl<'ast> syn::visit::Visit<'ast> for CratePaths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree("", &u.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let text: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.push(text.join("::"));
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        let tokens: String = mac
            .tokens
            .to_string()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        for part in tokens.split("crate::").skip(1) {
            self.0.push(part.to_owned());
        }
        syn::visit::visit_macro(self, mac);
    }
}

/// The `crate::…` paths a file's code names (see [`CratePaths`]).
fn crate_paths(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let parsed =
        syn::parse_file(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
    let mut paths = CratePaths(Vec::new());
    syn::visit::Visit::visit_file(&mut paths, &parsed);
    paths.0
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
        for path in crate_paths(&file) {
            if let Some(to) = node_of(&path)
                && to != node
            {
                edges.insert(to);
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
        for w in s.g.get(v).into_iter().flatten() {
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
        for path in crate_paths(&file) {
            let name: String = path
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if aliases.contains(&name.as_str()) {
                found.push(format!("{}: crate::{name}", file.display()));
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

/// The reader itself, on a small source tree of its own: a cycle closed by
/// a grouped `use crate::{…}` (multi-line, nested), in a file whose first
/// `#[cfg(test)]` marks a single function, not the rest of the file. The
/// line reader this replaced (split at the first `#[cfg(test)]`, then
/// `crate::` per line) misses it, and is run here too to show the tree
/// holds the fault.
#[test]
fn the_reader_finds_a_grouped_import_after_a_test_only_item() {
    let root = std::env::temp_dir().join(format!("paycache-cycles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("infra")).unwrap();
    std::fs::create_dir_all(root.join("domain")).unwrap();
    std::fs::write(root.join("lib.rs"), "pub mod infra;\npub mod domain;\n").unwrap();
    std::fs::write(
        root.join("infra/store.rs"),
        r#"
// crate::domain::ignored in a comment is not an import.
#[cfg(test)]
fn only_in_tests() {}

use crate::{
    infra::other,
    domain::{wallet::Wallet, unrelated},
};

pub fn load() -> Wallet { todo!() }

#[cfg(test)]
mod tests {
    use crate::domain::tested_only;
}
"#,
    )
    .unwrap();
    std::fs::write(root.join("infra/other.rs"), "pub fn f() {}\n").unwrap();
    std::fs::write(
        root.join("domain/wallet.rs"),
        "pub struct Wallet;\npub fn save() { crate::infra::store::load(); }\n",
    )
    .unwrap();
    let g = graph(&root);
    let store = &g["infra::store"];
    let expected: BTreeSet<String> = ["infra::other", "domain::wallet", "domain::unrelated"]
        .map(str::to_owned)
        .into();
    assert_eq!(store, &expected, "comments and test code name nothing");
    let found = cycles(&g);
    assert!(
        found.contains(&vec![
            "domain::wallet".to_owned(),
            "infra::store".to_owned()
        ]),
        "{found:?}"
    );
    assert!(upward(&g).contains(&"infra::store -> domain::wallet".to_owned()));

    // The line reader this replaced, through the same graph and check.
    let line_reader = |file: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("").to_owned();
        code.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .flat_map(|l| {
                l.split("crate::")
                    .skip(1)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut old = Graph::new();
    for (node, file) in [
        ("infra::store", "infra/store.rs"),
        ("domain::wallet", "domain/wallet.rs"),
    ] {
        let edges = old.entry(node.to_owned()).or_default();
        for path in line_reader(&root.join(file)) {
            if let Some(to) = node_of(&path) {
                edges.insert(to);
            }
        }
    }
    assert!(
        cycles(&old).is_empty(),
        "the line reader was expected to miss it"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
