//! The library's modules form layers: a module uses only modules below it, so the order's data
//! flows one way and no two modules import each other. The table below is the map, lowest
//! first; a new module takes its place in it.

use std::collections::BTreeMap;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every module of the library, lowest layer first (a path under `src/`, `mod.rs` and `.rs`
/// left out). A module may use the modules before it, never one after it.
const LAYERS: &[&str] = &[
    // The pure domain.
    "domain/bounded",
    "domain/ids",
    "domain/names",
    "domain/arn",
    "domain/email",
    "domain/password",
    "domain/account_model",
    "domain/order",
    "domain/outcome",
    "domain/model/email_rules",
    "domain/model/settings",
    "domain/model/layers",
    "domain/model/resolve",
    "domain/model/later",
    "domain/model",
    "domain/progress",
    "domain",
    // Settings, then the pure policies over them.
    "config",
    "retry",
    "observability",
    // The narrow interfaces of the trip's resources.
    "locks",
    "slots",
    "aws",
    "aws/fake",
    "aws/sdk",
    "aws/probe",
    // The trip.
    "provision/gate",
    "provision/creation",
    "provision/access",
    "provision/placement",
    "provision/fixtures",
    "provision",
    "report",
    // The later requests of a subscription: one module per kind over the shared ownership check.
    "lifecycle/testing",
    "lifecycle/change",
    "lifecycle/suspend",
    "lifecycle/cancel",
    "lifecycle/existing",
    "lifecycle",
    "pipeline",
    "settle",
    "explain",
    // The broker side.
    "broker/publisher",
    "broker/headers",
    "broker/topology",
    "broker/management",
    "broker/in_force",
    "broker/lease",
    "broker/locks",
    "broker/slots",
    "broker/settle",
    "broker",
    // Running it.
    "app/handler",
    "app/consumer",
    "app",
    "startup",
    "check",
    "replay",
    "lib",
];

/// The module a `src/` file is: `src/broker/mod.rs` → `broker`, `src/app/handler.rs` →
/// `app/handler`.
fn module_of(file: &Path) -> String {
    let relative = file
        .strip_prefix(Path::new(ROOT).join("src"))
        .expect("under src")
        .with_extension("");
    let name = relative.to_string_lossy().replace('\\', "/");
    name.strip_suffix("/mod").unwrap_or(&name).to_owned()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without its unit tests (`#[cfg(test)] mod tests` comes last in every file).
fn code_of(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at])
}

/// The modules that `module`'s `code` names through `crate::…`, `super::…` or `self::…`
/// paths (in a `use`, braces expanded, or inline), resolved to the longest module of `known`.
fn uses(module: &str, code: &str, known: &[String]) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` statements, whitespace removed and braces expanded.
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let statement = &rest[at + 4..];
        let end = statement.find(';').unwrap_or(statement.len());
        let compact: String = statement[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        paths.extend(expand(&compact));
        rest = &statement[end..];
    }
    // Inline paths: `crate::broker::topology::declare(…)`.
    for word in code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        if ["crate::", "super::", "self::"]
            .iter()
            .any(|prefix| word.starts_with(prefix))
        {
            paths.push(word.trim_end_matches(':').to_owned());
        }
    }
    let mut found: Vec<String> = paths
        .iter()
        .filter_map(|path| resolve(module, path, known))
        .filter(|target| target != module && !module.starts_with(&format!("{target}/")))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e` (no whitespace in `path`).
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.trim_end_matches("::").to_owned()];
    };
    let (prefix, inner) = (&path[..open], &path[open + 1..]);
    let inner = inner.strip_suffix('}').unwrap_or(inner);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|part| !part.is_empty())
        .flat_map(|part| expand(&format!("{prefix}{part}")))
        .collect()
}

/// The module a path names, from inside `module`.
fn resolve(module: &str, path: &str, known: &[String]) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    let mut base: Vec<&str> = match parts.first() {
        Some(&"crate") => Vec::new(),
        Some(&"self") => module.split('/').collect(),
        Some(&"super") => {
            let mut base: Vec<&str> = module.split('/').collect();
            base.pop();
            while parts.get(1) == Some(&"super") {
                base.pop();
                parts.remove(0);
            }
            base
        }
        _ => return None,
    };
    parts.remove(0);
    base.extend(parts);
    while !base.is_empty() {
        let candidate = base.join("/");
        if known.contains(&candidate) {
            return Some(candidate);
        }
        base.pop();
    }
    None
}

#[test]
fn every_module_uses_only_modules_below_it() {
    let mut files = Vec::new();
    sources(&Path::new(ROOT).join("src"), &mut files);
    let modules: BTreeMap<String, String> = files
        .iter()
        .filter(|file| !file.ends_with("main.rs"))
        .map(|file| {
            let text = std::fs::read_to_string(file).expect("read");
            (module_of(file), code_of(&text).to_owned())
        })
        .collect();
    let known: Vec<String> = modules.keys().cloned().collect();
    let rank = |module: &str| LAYERS.iter().position(|m| *m == module);
    let unplaced: Vec<&String> = known.iter().filter(|m| rank(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS in tests/it/layers.rs: {unplaced:?}"
    );
    let gone: Vec<&&str> = LAYERS
        .iter()
        .filter(|m| !known.iter().any(|k| k == *m))
        .collect();
    assert!(
        gone.is_empty(),
        "LAYERS names modules that are gone: {gone:?}"
    );
    let mut upward = Vec::new();
    for (module, code) in &modules {
        for used in uses(module, code, &known) {
            if rank(&used) > rank(module) {
                upward.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports up the layers (move the shared part down, or the module up):\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_layer_check_sees_every_kind_of_path() {
    let known: Vec<String> = [
        "domain",
        "domain/order",
        "broker",
        "broker/topology",
        "config",
    ]
    .map(str::to_owned)
    .to_vec();
    let code = "use crate::config::{Settings, X};\nuse super::order::Y;\nlet z = crate::broker::topology::declare(a);\nuse crate::{\n    broker,\n    domain::{order, self},\n};";
    assert_eq!(
        uses("domain/model", code, &known),
        ["broker", "broker/topology", "config", "domain/order"]
    );
    assert_eq!(
        uses("broker/settle", "use super::topology;", &known),
        ["broker/topology"]
    );
}
