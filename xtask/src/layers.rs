//! The layer check: the collector's modules import only modules listed before them in the
//! table of `collector/src/lib.rs` (its "Layers" section), so data and imports flow one way.
//!
//! Every `use` tree and every path in the code that starts with `crate::` or climbs out of its
//! module with `super::` is resolved to the top-level module it names; a lower module naming a
//! higher one (or a module missing from the table) fails the check, naming the file, the line
//! and the import.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use syn::visit::Visit;

const CRATE_SRC: &str = "collector/src";
const TABLE_FILE: &str = "collector/src/lib.rs";

/// An import that breaks the order.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    pub line: usize,
    pub from: String,
    pub imports: String,
    pub path: String,
    /// The imported module has no row in the table.
    pub unlisted: bool,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = if self.unlisted {
            "which has no row in the layer table"
        } else {
            "which the layer table lists after it"
        };
        write!(
            f,
            "{}:{}: `{}` imports `{}` ({}), {why}",
            self.file.display(),
            self.line,
            self.from,
            self.imports,
            self.path
        )
    }
}

/// Runs the check over the workspace at the current directory.
pub fn check() -> anyhow::Result<()> {
    let table =
        std::fs::read_to_string(TABLE_FILE).with_context(|| format!("reading {TABLE_FILE}"))?;
    let order = layer_order(&table)?;
    let mut violations = Vec::new();
    let mut files = Vec::new();
    rust_files(Path::new(CRATE_SRC), &mut files)?;
    files.sort();
    let mut unlisted = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(CRATE_SRC).unwrap_or(file);
        let Some(module) = module_path(relative) else {
            continue; // lib.rs and the binary: the roots, above every layer.
        };
        if !order.iter().any(|m| m == &module[0]) {
            unlisted.push(format!("{} (module `{}`)", file.display(), module[0]));
            continue;
        }
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        violations.extend(check_file(file, &module, &text, &order)?);
    }
    unlisted.dedup();
    anyhow::ensure!(
        unlisted.is_empty(),
        "modules missing from the layer table in {TABLE_FILE}: {}",
        unlisted.join(", ")
    );
    if violations.is_empty() {
        eprintln!(
            "==> layers: {} files of {} modules import only earlier layers",
            files.len(),
            order.len()
        );
        return Ok(());
    }
    for v in &violations {
        eprintln!("{v}");
    }
    anyhow::bail!(
        "{} import(s) against the layer order of {TABLE_FILE}",
        violations.len()
    )
}

/// Module names in order, from the rows `| N | [`name`] | … |` of the "Layers" table.
pub fn layer_order(lib_rs: &str) -> anyhow::Result<Vec<String>> {
    let mut order = Vec::new();
    for line in lib_rs.lines() {
        let Some(row) = line.trim_start().strip_prefix("//!") else {
            continue;
        };
        let cells: Vec<&str> = row.trim().split('|').map(str::trim).collect();
        // "| 3 | [`net`] | … |" splits into ["", "3", "[`net`]", "…", ""].
        if cells.len() < 4 || cells[1].parse::<usize>().is_err() {
            continue;
        }
        let name = cells[2].trim_start_matches("[`").trim_end_matches("`]");
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "layer table row {row:?}: expected a module as [`name`]"
        );
        order.push(name.to_owned());
    }
    anyhow::ensure!(
        order.len() > 1,
        "no layer table (rows `| N | [`module`] | … |`) in {TABLE_FILE}"
    );
    Ok(order)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `aggregate/feed.rs` -> ["aggregate", "feed"]; `store.rs` -> ["store"];
/// `sampler/mod.rs` -> ["sampler"]; `None` for the crate roots.
fn module_path(relative: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [] => None,
        [root] if root == "lib" || root == "main" => None,
        // The binary (src/bin/collector/): a root too, above every layer.
        [first, ..] if first == "bin" => None,
        _ => Some(parts),
    }
}

/// The violations in one file whose module path is `module`.
fn check_file(
    file: &Path,
    module: &[String],
    text: &str,
    order: &[String],
) -> anyhow::Result<Vec<Violation>> {
    let syntax = syn::parse_file(text).with_context(|| format!("parsing {}", file.display()))?;
    let mut paths = PathCollector::default();
    paths.visit_file(&syntax);
    let rank = |m: &str| order.iter().position(|o| o == m);
    let own = rank(&module[0]);
    let mut out = Vec::new();
    for (segments, inline, line) in paths.found {
        let mut here = module.to_vec();
        here.extend(inline);
        let Some(target) = top_module(&here, &segments) else {
            continue;
        };
        if target == module[0] {
            continue;
        }
        let target_rank = rank(&target);
        // An unknown name (a re-export at the crate root, say) is a module nobody placed.
        let later = match (target_rank, own) {
            (Some(t), Some(o)) => t > o,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if later {
            out.push(Violation {
                file: file.to_path_buf(),
                line,
                from: module[0].clone(),
                imports: target,
                path: segments.join("::"),
                unlisted: target_rank.is_none(),
            });
        }
    }
    Ok(out)
}

/// The top-level module a path names, resolved from the module it appears in; `None` for paths
/// that stay inside the module or leave the crate.
fn top_module(module: &[String], segments: &[String]) -> Option<String> {
    let mut here: Vec<&str> = module.iter().map(String::as_str).collect();
    let mut rest = segments.iter().map(String::as_str);
    match rest.next()? {
        "crate" => here.clear(),
        "super" => {
            here.pop()?;
            for s in rest.by_ref() {
                if s != "super" {
                    if here.is_empty() {
                        return Some(s.to_owned());
                    }
                    return None;
                }
                here.pop()?;
            }
            return None;
        }
        _ => return None,
    }
    rest.next().map(str::to_owned)
}

/// Every `crate::…` / `super::…` path of a file, with the inline modules (`mod tests { … }`)
/// it sits in and its line.
#[derive(Default)]
struct PathCollector {
    found: Vec<(Vec<String>, Vec<String>, usize)>,
    inline: Vec<String>,
}

impl PathCollector {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, line: usize) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, line);
                prefix.pop();
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t, line);
                }
            }
            syn::UseTree::Name(n) => self.record(prefix, Some(n.ident.to_string()), line),
            syn::UseTree::Rename(r) => self.record(prefix, Some(r.ident.to_string()), line),
            syn::UseTree::Glob(_) => self.record(prefix, None, line),
        }
    }

    fn record(&mut self, prefix: &[String], last: Option<String>, line: usize) {
        let mut segments = prefix.to_vec();
        segments.extend(last);
        if matches!(
            segments.first().map(String::as_str),
            Some("crate" | "super")
        ) {
            self.found.push((segments, self.inline.clone(), line));
        }
    }
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.inline.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.inline.pop();
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let line = item.use_token.span.start().line;
        self.use_tree(&mut Vec::new(), &item.tree, line);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = path
            .segments
            .first()
            .map_or(0, |s| s.ident.span().start().line);
        self.record(&segments, None, line);
        syn::visit::visit_path(self, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "//! | order | module | holds |\n//! |---|---|---|\n\
        //! | 1 | [`proto`] | wire |\n//! | 2 | [`sampler`] | passes |\n\
        //! | 3 | [`store`] | state |\n//! | 4 | [`server`] | gRPC |\n";

    fn order() -> Vec<String> {
        layer_order(TABLE).unwrap()
    }

    fn violations(file: &str, text: &str) -> Vec<String> {
        let module = module_path(Path::new(file)).unwrap();
        check_file(Path::new(file), &module, text, &order())
            .unwrap()
            .into_iter()
            .map(|v| format!("{}:{} {}", v.line, v.imports, v.path))
            .collect()
    }

    #[test]
    fn the_table_gives_the_order() {
        assert_eq!(order(), ["proto", "sampler", "store", "server"]);
        assert!(layer_order("//! no table here").is_err());
    }

    #[test]
    fn upward_imports_are_named_with_their_line() {
        let text = "use crate::{proto, server::convert::{self, unix_nanos}};\n\
                    use super::other;\n\
                    fn f() { crate::server::bind(); let _ = crate::proto::X; }\n";
        assert_eq!(
            violations("store.rs", text),
            [
                "1:server crate::server::convert::self",
                "1:server crate::server::convert::unix_nanos",
                // Out of the top-level file to the crate root: a module nobody placed.
                "2:other super::other",
                "3:server crate::server::bind",
            ]
        );
    }

    #[test]
    fn downward_and_inner_imports_pass() {
        let text = "use crate::{proto, sampler::Sample};\nuse super::watch::Options;\n\
                    mod tests { use super::*; use crate::store::Snapshot; }\n";
        assert!(violations("server/chunk.rs", text).is_empty());
    }

    #[test]
    fn super_out_of_a_top_level_module_is_resolved() {
        // In server/mod.rs, `super::` is the crate root.
        assert_eq!(
            violations("sampler/mod.rs", "use super::store::Snapshot;\n"),
            ["1:store super::store::Snapshot"]
        );
        assert!(violations("sampler/ebpf.rs", "use super::hierarchy::X;\n").is_empty());
        assert_eq!(
            violations("sampler/ebpf.rs", "use super::super::server::X;\n"),
            ["1:server super::super::server::X"]
        );
    }

    #[test]
    fn super_inside_an_inline_module_stays_in_the_file() {
        let text = "mod tests { use super::Sample; use super::super::store::X; }\n";
        assert_eq!(
            violations("sampler/mod.rs", text),
            ["1:store super::super::store::X"]
        );
    }

    #[test]
    fn unknown_modules_count_as_violations() {
        assert_eq!(
            violations("store.rs", "use crate::mystery::Thing;\n"),
            ["1:mystery crate::mystery::Thing"]
        );
    }
}
