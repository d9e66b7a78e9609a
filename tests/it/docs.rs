//! The documentation stays true and self-contained: the configuration reference in
//! `docs/configuration.md` lists every key of `config/default.toml` with its default, the
//! Multi-Payer example loads, the README stays short, every relative link in the README and
//! `docs/` leads to a file (and heading) that exists, and nothing outside `.ci/` points outside
//! the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The README's budget: what it is, the picture, one real event of each later request, the two
/// commands, compose, links.
const README_MAX_BYTES: u64 = 16 * 1024;

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// `section.key` (or `payers.NAME.key`) → the default as the reference writes it.
fn defaults() -> BTreeMap<String, String> {
    let file = format!("{ROOT}/config/default.toml");
    let value: Value = Figment::from(Toml::file(&file))
        .extract()
        .expect("config/default.toml loads");
    let render = |v: &Value| match v {
        Value::String(s) if s.is_empty() => "\"\"".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut keys = BTreeMap::new();
    for (section, table) in value.as_object().expect("a table") {
        for (key, v) in table.as_object().expect("sections are tables") {
            if section == "payers" {
                for (inner, v) in v.as_object().expect("payer tables") {
                    keys.insert(format!("payers.{key}.{inner}"), render(v));
                }
            } else {
                keys.insert(format!("{section}.{key}"), render(v));
            }
        }
    }
    keys
}

/// The rows of the configuration reference in `docs/configuration.md`: key → default.
fn reference() -> BTreeMap<String, String> {
    let doc = read("docs/configuration.md");
    let section = doc
        .split("## Configuration reference")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a configuration reference section in docs/configuration.md");
    section
        .lines()
        .filter_map(|line| {
            let mut cells = line.split(" | ");
            let key = cells.next()?.strip_prefix("| `")?.strip_suffix('`')?;
            let default = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((key.to_owned(), default.to_owned()))
        })
        .collect()
}

#[test]
fn the_configuration_reference_lists_every_key_with_its_default() {
    let defaults = defaults();
    let reference = reference();
    for (key, default) in &defaults {
        assert_eq!(
            reference.get(key),
            Some(default),
            "docs/configuration.md's reference: `{key}` with default `{default}`"
        );
    }
    let file = read("config/default.toml");
    for (key, default) in &reference {
        let name = key.rsplit('.').next().unwrap_or(key);
        let documented_optional = default == "(unset)" && file.contains(&format!("# {name} = "));
        assert!(
            defaults.contains_key(key) || documented_optional,
            "docs/configuration.md lists `{key}`, which config/default.toml neither sets nor documents"
        );
    }
}

/// The worked Multi-Payer example of `docs/configuration.md` loads as a configuration.
#[test]
fn the_multi_payer_example_is_a_valid_configuration() {
    let doc = read("docs/configuration.md");
    let example = doc
        .split("## Multi-Payer")
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("a TOML block in the Multi-Payer section");
    let settings = aws_account_worker::config::Settings::from_toml(example)
        .unwrap_or_else(|e| panic!("the Multi-Payer example: {e}"));
    assert_eq!(settings.payers.len(), 2, "default and opco-de");
    assert!(settings.marketplaces["MP-91673"].multi_payer);
}

#[test]
fn the_readme_fits_in_16_kib() {
    let size = std::fs::metadata(format!("{ROOT}/README.md"))
        .expect("README.md")
        .len();
    assert!(
        size <= README_MAX_BYTES,
        "README.md is {size} bytes, more than {README_MAX_BYTES}: move reference material into docs/"
    );
}

/// The README and every `docs/*.md`, as paths relative to the repository.
fn documents() -> Vec<String> {
    let mut docs = vec!["README.md".to_owned()];
    let dir = std::fs::read_dir(format!("{ROOT}/docs")).expect("docs/");
    for entry in dir {
        let name = entry.expect("a docs/ entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    docs.sort();
    docs
}

/// The targets of the inline Markdown links `[text](target)` outside code blocks and spans.
fn links(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans, whose brackets are not links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].trim().to_owned());
            rest = &after[end..];
        }
    }
    found
}

/// GitHub's anchor for a heading: lower-cased, punctuation other than `-` and `_` dropped,
/// spaces turned into dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    markdown
        .lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced && line.starts_with('#')
        })
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_leads_somewhere() {
    let root = Path::new(ROOT);
    let mut broken = Vec::new();
    for doc in documents() {
        let text = read(&doc);
        let dir = Path::new(&doc).parent().unwrap_or(Path::new(""));
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target: PathBuf = if path.is_empty() {
                root.join(&doc)
            } else {
                root.join(dir).join(path)
            };
            if !target.exists() {
                broken.push(format!("{doc}: `{link}`: no such file"));
                continue;
            }
            let is_markdown = target.extension().is_some_and(|e| e == "md");
            if !fragment.is_empty() && is_markdown {
                let text = std::fs::read_to_string(&target).expect("a readable file");
                if !anchors(&text).contains(fragment) {
                    broken.push(format!("{doc}: `{link}`: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every file of the repository but the build output, the moto virtualenv, git's own files
/// and `.ci/` (which may read the advisory database beside the repository).
fn repository_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let skipped = ["target", ".git", ".venv", ".ci"];
    for entry in std::fs::read_dir(dir).expect("a readable directory") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref().is_some_and(|n| skipped.contains(&n)) {
            continue;
        }
        if path.is_dir() {
            repository_files(&path, found);
        } else {
            found.push(path);
        }
    }
}

#[test]
fn nothing_outside_ci_points_outside_the_repository() {
    // Spelled in pieces so that this file does not name what it looks for.
    let needles = [["..", "shared"].join("/"), ["CONTR", "ACT"].concat()];
    let mut files = Vec::new();
    repository_files(Path::new(ROOT), &mut files);
    let mut offenders = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // not text
        };
        for needle in &needles {
            if text.contains(needle.as_str()) {
                let relative = file.strip_prefix(ROOT).unwrap_or(&file);
                offenders.push(format!("{} names `{needle}`", relative.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "the repository must stand on its own (docs/contract.md is its contract):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(
        anchor(" Dead letters: inspect, replay, alert"),
        "dead-letters-inspect-replay-alert"
    );
    assert_eq!(
        anchor(" aws.account.dead-lettered"),
        "awsaccountdead-lettered"
    );
    assert_eq!(anchor(" 1. What the worker does"), "1-what-the-worker-does");
    assert_eq!(anchor(" `check` and `replay`"), "check-and-replay");
}

/// The repository paths the README and `docs/` name in code spans (`src/…`, `deploy/…`, …).
fn named_paths(markdown: &str) -> Vec<String> {
    let roots = [
        "src/",
        "tests/",
        "deploy/",
        "config/",
        "examples/",
        "scripts/",
        "docs/",
        ".ci/",
    ];
    markdown
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| roots.iter().any(|root| span.starts_with(root)))
        .filter(|span| !span.contains(char::is_whitespace) && !span.contains(['<', '*', '…']))
        .map(|span| span.trim_end_matches('/').to_owned())
        .collect()
}

#[test]
fn every_file_the_docs_name_exists() {
    let mut missing = Vec::new();
    for doc in documents() {
        for path in named_paths(&read(&doc)) {
            if !Path::new(ROOT).join(&path).exists() {
                missing.push(format!("{doc}: `{path}`"));
            }
        }
    }
    assert!(missing.is_empty(), "no such file:\n{}", missing.join("\n"));
}

/// The part of `markdown` under the heading `## {title}`, up to the next `## `.
fn section<'a>(markdown: &'a str, title: &str) -> &'a str {
    markdown
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_else(|| panic!("a `## {title}` section"))
}

/// The fields of the `| field | type | meaning |` tables in a section.
fn field_rows(section: &str) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    let mut in_table = false;
    for line in section.lines() {
        if line.starts_with("| field |") {
            in_table = true;
        } else if !line.starts_with('|') {
            in_table = false;
        } else if in_table
            && let Some(field) = line
                .split(" | ")
                .next()
                .and_then(|cell| cell.strip_prefix("| `"))
                .and_then(|f| f.strip_suffix('`'))
        {
            fields.insert(field.to_owned());
        }
    }
    fields
}

/// The JSON examples of a section.
fn examples(section: &str) -> Vec<Value> {
    section
        .split("```json\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .map(|json| serde_json::from_str(json).unwrap_or_else(|e| panic!("an example: {e}")))
        .collect()
}

/// Every field path of `value` (`account.id`), not descending below a documented field
/// (`template.params` is a map, documented as one).
fn paths(value: &Value, prefix: &str, documented: &BTreeSet<String>, out: &mut Vec<String>) {
    let Value::Object(map) = value else { return };
    for (key, inner) in map {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if inner.is_object() && !documented.contains(&path) {
            paths(inner, &path, documented, out);
        } else {
            out.push(path);
        }
    }
}

/// `docs/events.md` documents every field its examples carry, and each field it documents
/// appears in an example: the tables and the captured events describe the same shape.
#[test]
fn the_event_tables_match_their_examples() {
    let doc = read("docs/events.md");
    let envelope = field_rows(section(&doc, "The fields every event starts with"));
    assert!(envelope.contains("event_id"), "the envelope table");
    for event in [
        "aws.account.provisioned",
        "aws.account.failed",
        "aws.account.dead-lettered",
        "aws.account.invited",
        "aws.account.suspended",
        "aws.account.resumed",
        "aws.account.closed",
        "aws.account.removed",
        "aws.account.cancelled",
        "aws.account.changed",
    ] {
        let part = section(&doc, event);
        let fields = field_rows(part);
        let documented: BTreeSet<String> = envelope.union(&fields).cloned().collect();
        let examples = examples(part);
        assert!(!examples.is_empty(), "{event}: an example");
        let mut seen = BTreeSet::new();
        for example in &examples {
            assert_eq!(example["event"], event, "{event}: the example's `event`");
            let mut found = Vec::new();
            paths(example, "", &documented, &mut found);
            for path in &found {
                assert!(
                    documented.contains(path),
                    "{event}: the example has `{path}`, which no table documents"
                );
            }
            for field in &envelope {
                assert!(
                    found.contains(field),
                    "{event}: the example lacks `{field}`"
                );
            }
            seen.extend(found);
        }
        for field in &fields {
            assert!(
                seen.contains(field),
                "{event}: `{field}` is documented but in no example"
            );
        }
    }
}

/// `docs/contract.md` names every configuration key (in its key table, `§2`).
#[test]
fn the_contract_names_every_configuration_key() {
    let contract = read("docs/contract.md");
    let table = section(
        &contract,
        "2. Binary, command line, configuration, environment",
    );
    for key in reference().keys() {
        let (section, name) = key.split_once('.').expect("section.key");
        let header = if section == "payers" {
            "| `[payers.NAME]` |".to_owned()
        } else {
            format!("| `[{section}]` |")
        };
        let name = name.rsplit('.').next().unwrap_or(name);
        let row = table
            .lines()
            .find(|line| line.starts_with(&header))
            .unwrap_or_else(|| panic!("docs/contract.md §2: a row for {header}"));
        assert!(
            row.contains(&format!("`{name}`")),
            "docs/contract.md §2 does not name `{key}`"
        );
    }
}
