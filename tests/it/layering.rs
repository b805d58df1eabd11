//! The module layering of `src/`: every import points down the layer order
//! in [`LAYERS`], and no files or top-level modules import each other in a
//! cycle.
//!
//! The check reads the sources instead of compiling anything: it strips
//! comments and string literals, then follows every `crate::`, `super::` and
//! `self::` path (and a `mod.rs` naming its own child modules) to the deepest
//! file-backed module it names. A file may use its parent module (the
//! parent's `mod.rs` is the face of its directory); every other edge counts.
//! Unit tests (`#[cfg(test)]` modules and the files they include) are left
//! out: they may check a module together with its neighbours. So are
//! re-exports (`pub use`): they are a module's face, not a use of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers from the bottom up, each a list of modules: top-level ones,
/// or a file of one when it sits higher than the rest of its directory. A
/// module may import modules of its own layer or of a lower one, never one
/// of a higher layer; a module belongs to its longest entry here.
const LAYERS: &[&[&str]] = &[
    &["protocol", "id_map", "shutdown", "metrics", "upgrade"],
    // `auth::hba` reads the text of a pg_hba.conf file given to it and
    // matches a login against it: no I/O, as `sql` reads SQL text.
    &["sql", "auth::hba"],
    &["config"],
    // `settings`: the config, users and TLS as a reload leaves them.
    &["tls", "net", "auth", "users", "listener", "settings"],
    &["server"],
    &["pool", "cancel", "auth::query"],
    &["listen"],
    // `State`, what every task of an instance shares, and the list of
    // logged-in clients the console reads.
    &["state"],
    &["client"],
    &["admin"],
    &["lib", "run", "demo", "scratch_pg", "watch", "takeover"],
];

/// Imports from a lower layer to a higher one that are still to be removed,
/// as (importing file, imported file) module paths. The goal is none.
const ALLOWED_UPWARD: &[(&str, &str)] = &[];

/// Cycles still to be broken, each as its sorted member list joined by
/// `" "`. Cycles between layer entries are listed by entry name. The goal
/// is none.
const ALLOWED_CYCLES: &[&str] = &[];

#[test]
fn imports_only_point_down_the_layers_and_never_in_a_cycle() {
    let graph = Graph::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let upward = graph.upward_imports();
    let cycles = graph.cycles();
    for (from, to) in &upward {
        println!("upward: {from} -> {to}");
    }
    for cycle in &cycles {
        println!("cycle: {cycle}");
    }
    let allowed_upward: BTreeSet<(String, String)> = ALLOWED_UPWARD
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let allowed_cycles: BTreeSet<String> = ALLOWED_CYCLES.iter().map(|c| c.to_string()).collect();
    let new_upward: Vec<_> = upward.difference(&allowed_upward).collect();
    let new_cycles: Vec<_> = cycles.difference(&allowed_cycles).collect();
    let fixed_upward: Vec<_> = allowed_upward.difference(&upward).collect();
    let fixed_cycles: Vec<_> = allowed_cycles.difference(&cycles).collect();
    assert!(
        new_upward.is_empty() && new_cycles.is_empty(),
        "imports against the layer order {LAYERS:?}: {new_upward:?}; cycles: {new_cycles:?}"
    );
    assert!(
        fixed_upward.is_empty() && fixed_cycles.is_empty(),
        "allow-list entries that no longer occur (remove them): {fixed_upward:?} {fixed_cycles:?}"
    );
}

#[test]
fn every_top_level_module_has_a_layer() {
    let graph = Graph::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let missing: Vec<_> = graph
        .modules
        .iter()
        .map(|m| unit_of(m))
        .filter(|unit| layer_of(unit).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in LAYERS: {missing:?}"
    );
}

fn layer_of(unit: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&unit))
}

/// The entry of [`LAYERS`] a module belongs to: `client::relay` → `client`,
/// `metrics::http` → `metrics::http`; the crate root is `lib`.
fn unit_of(module: &str) -> String {
    if module.is_empty() {
        return "lib".to_string();
    }
    let listed = LAYERS
        .iter()
        .flat_map(|layer| layer.iter())
        .filter(|entry| module == **entry || module.starts_with(&format!("{entry}::")))
        .max_by_key(|entry| entry.len());
    match listed {
        Some(entry) => entry.to_string(),
        None => module.split("::").next().unwrap_or(module).to_string(),
    }
}

struct Graph {
    /// Every file-backed module, `""` for the crate root.
    modules: BTreeSet<String>,
    /// Module → the modules it names.
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut files = Vec::new();
        collect_rs(src, &mut files);
        let mut by_module = BTreeMap::new();
        // Files included with `#[path]` (tests kept beside their module)
        // belong to the module that includes them.
        let mut included = BTreeMap::new();
        for file in &files {
            let rel = file.strip_prefix(src).unwrap();
            let Some(module) = module_of(rel) else {
                continue;
            };
            let text = std::fs::read_to_string(file).unwrap();
            for (path, name) in path_includes(&text) {
                let dir = file.parent().unwrap();
                included.insert(dir.join(path), format!("{module}::{name}"));
            }
            by_module.insert(module, (file.clone(), text));
        }
        let modules: BTreeSet<String> = by_module
            .keys()
            .filter(|m| !included.values().any(|inc: &String| inc == *m))
            .cloned()
            .collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (module, (file, text)) in &by_module {
            if included.contains_key(file) || !modules.contains(module) {
                continue;
            }
            let (owner, base) = (module.clone(), module.clone());
            let children = child_modules(text);
            for path in paths(&strip(text), &base, &children) {
                if let Some(target) = resolve(&modules, &path) {
                    if target != owner && (target.is_empty() || !is_ancestor(&target, &owner)) {
                        edges.entry(owner.clone()).or_default().insert(target);
                    }
                }
            }
        }
        Graph { modules, edges }
    }

    fn upward_imports(&self) -> BTreeSet<(String, String)> {
        let mut upward = BTreeSet::new();
        for (from, tos) in &self.edges {
            for to in tos {
                let (a, b) = (layer_of(&unit_of(from)), layer_of(&unit_of(to)));
                if let (Some(a), Some(b)) = (a, b) {
                    if b > a {
                        upward.insert((display(from), display(to)));
                    }
                }
            }
        }
        upward
    }

    /// Cycles between files, and between the entries of [`LAYERS`].
    fn cycles(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for scc in strongly_connected(&self.edges) {
            found.insert(scc.iter().map(|m| display(m)).collect::<Vec<_>>().join(" "));
        }
        let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, tos) in &self.edges {
            for to in tos {
                let (a, b) = (unit_of(from), unit_of(to));
                if a != b {
                    tops.entry(a).or_default().insert(b);
                }
            }
        }
        for scc in strongly_connected(&tops) {
            found.insert(scc.into_iter().collect::<Vec<_>>().join(" "));
        }
        found
    }
}

fn display(module: &str) -> String {
    if module.is_empty() {
        "lib".to_string()
    } else {
        module.to_string()
    }
}

fn is_ancestor(ancestor: &str, module: &str) -> bool {
    module.starts_with(&format!("{ancestor}::"))
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `client/relay.rs` → `client::relay`; `lib.rs` → `""`; the binary's
/// `main.rs` uses the library by its name and is no module of it.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.last().map(String::as_str) {
        Some("main") if parts.len() == 1 => return None,
        Some("lib") if parts.len() == 1 => return Some(String::new()),
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    Some(parts.join("::"))
}

/// `#[cfg(test)] #[path = "x.rs"] mod name;` pairs of a file.
fn path_includes(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    let mut test = false;
    while let Some(line) = lines.next() {
        let after_cfg_test = std::mem::replace(&mut test, line.trim() == "#[cfg(test)]");
        let Some(rest) = line.trim().strip_prefix("#[path = \"") else {
            continue;
        };
        if !after_cfg_test {
            continue;
        }
        let Some((path, _)) = rest.split_once('"') else {
            continue;
        };
        for next in lines.by_ref() {
            if let Some(decl) = next.trim().strip_prefix("mod ") {
                out.push((
                    path.to_string(),
                    decl.trim_end_matches(';').trim().to_string(),
                ));
                break;
            }
        }
    }
    out
}

/// Names declared with `mod name;` (file-backed children).
fn child_modules(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line
                .strip_prefix("pub(crate) ")
                .or(line.strip_prefix("pub "))
                .unwrap_or(line);
            let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// The source without comments and with string and char literals emptied,
/// so only code is searched for paths.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if (b.get(i + 1) == Some(&b'#') || b.get(i + 1) == Some(&b'"'))
                && (i == 0 || !is_ident(b[i - 1])) =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                i += 2 + hashes;
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += 1;
                }
                i += close.len();
                out.extend_from_slice(b"\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.extend_from_slice(b"\"\"");
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|p| i + 2 + p)
                } else if b.get(i + 2) == Some(&b'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match end {
                    Some(end) => {
                        out.extend_from_slice(b"' '");
                        i = end + 1;
                    }
                    None => {
                        out.push(b'\'');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Every path the code names that starts at `crate`, `super`, `self` or (in
/// a module's own file) one of its child modules, made absolute: a list of
/// segments from the crate root. `base` is the file's module; inline
/// `mod name { … }` blocks are followed so `super` inside them resolves.
fn paths(code: &str, base: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let tokens = tokenize(code);
    let mut out = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            // A re-export is the module's face, not a use of what it names.
            "pub" if is_reexport(&tokens[i..]) => {
                i += tokens[i..].iter().position(|t| t == ";").unwrap_or(0) + 1;
                continue;
            }
            "mod" if tokens.get(i + 2).map(String::as_str) == Some("{") => {
                if is_cfg_test(&tokens[..i]) {
                    i = block_end(&tokens, i + 2);
                    continue;
                }
                inline.push((tokens[i + 1].clone(), depth));
            }
            _ => {}
        }
        let starts_path = tokens.get(i + 1).map(String::as_str) == Some("::")
            && (i == 0 || tokens[i - 1] != "::")
            && (matches!(t, "crate" | "super" | "self")
                || (inline.is_empty() && children.contains(t)));
        if starts_path {
            let mut here: Vec<String> = split(base);
            here.extend(inline.iter().map(|(name, _)| name.clone()));
            let (tree, next) = use_tree(&tokens, i);
            for path in tree {
                if let Some(abs) = absolute(&here, &path) {
                    out.push(abs);
                }
            }
            i = next;
            continue;
        }
        i += 1;
    }
    out
}

/// Whether the tokens start `pub use` or `pub(…) use`.
fn is_reexport(tokens: &[String]) -> bool {
    match tokens.get(1).map(String::as_str) {
        Some("use") => true,
        Some("(") => tokens
            .iter()
            .skip(2)
            .skip_while(|t| *t != ")")
            .nth(1)
            .is_some_and(|t| t == "use"),
        _ => false,
    }
}

/// Whether the tokens before an item end with `#[cfg(test)]`.
fn is_cfg_test(before: &[String]) -> bool {
    let tail: Vec<&str> = before
        .iter()
        .rev()
        .take(7)
        .rev()
        .map(String::as_str)
        .collect();
    tail == ["#", "[", "cfg", "(", "test", ")", "]"]
}

/// The index after the block whose `{` is at `open`.
fn block_end(tokens: &[String], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

fn split(module: &str) -> Vec<String> {
    if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_string).collect()
    }
}

/// Resolves leading `crate`/`super`/`self` against the current module.
fn absolute(here: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut cur = here.to_vec();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            cur.clear();
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                cur.pop()?;
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    cur.extend(rest.iter().cloned());
    Some(cur)
}

/// The deepest file-backed module a path names.
fn resolve(modules: &BTreeSet<String>, path: &[String]) -> Option<String> {
    let mut best = None;
    for n in 0..=path.len() {
        let candidate = path[..n].join("::");
        if modules.contains(&candidate) {
            best = Some(candidate);
        }
    }
    best
}

fn tokenize(code: &str) -> Vec<String> {
    let b = code.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if is_ident(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            tokens.push(code[start..i].to_string());
        } else if b[i..].starts_with(b"::") {
            tokens.push("::".to_string());
            i += 2;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else {
            tokens.push((c as char).to_string());
            i += 1;
        }
    }
    tokens
}

/// Parses a path or use tree starting at `tokens[i]`: `a::b::{c, d::e}` gives
/// `[a,b,c]` and `[a,b,d,e]`. Returns the paths and the index after them.
fn use_tree(tokens: &[String], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        let Some(t) = tokens.get(i) else {
            return (vec![prefix], i);
        };
        if t == "{" {
            let mut out = Vec::new();
            i += 1;
            while i < tokens.len() && tokens[i] != "}" {
                if tokens[i] == "," {
                    i += 1;
                    continue;
                }
                let (inner, next) = use_tree(tokens, i);
                for p in inner {
                    let mut full = prefix.clone();
                    full.extend(p);
                    out.push(full);
                }
                i = next.max(i + 1);
            }
            return (out, i + 1);
        }
        if !t.bytes().all(is_ident) {
            return (vec![prefix], i);
        }
        prefix.push(t.clone());
        i += 1;
        if tokens.get(i).map(String::as_str) != Some("::") {
            return (vec![prefix], i);
        }
        i += 1;
    }
}

/// Tarjan's strongly connected components with more than one member.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.insert(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    self.out.push(scc);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.out
}
