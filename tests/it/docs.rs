//! The README's configuration reference stays in step with `config/default.toml`: every key
//! with its default, and no key that does not exist.

use std::collections::BTreeMap;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `section.key` (or `payers.NAME.key`) → the default as the README writes it.
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

/// The rows of the README's configuration reference: key → default.
fn reference() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README.md");
    let section = readme
        .split("## Configuration reference")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a configuration reference section");
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
            "README's configuration reference: `{key}` with default `{default}`"
        );
    }
    let file = std::fs::read_to_string(format!("{ROOT}/config/default.toml")).expect("file");
    for (key, default) in &reference {
        let name = key.rsplit('.').next().unwrap_or(key);
        let documented_optional = default == "(unset)" && file.contains(&format!("# {name} = "));
        assert!(
            defaults.contains_key(key) || documented_optional,
            "README lists `{key}`, which config/default.toml neither sets nor documents"
        );
    }
}

/// The README's worked Multi-Payer example loads as a configuration.
#[test]
fn the_multi_payer_example_is_a_valid_configuration() {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README.md");
    let example = readme
        .split("### Multi-Payer")
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("a TOML block in the Multi-Payer section");
    let settings = aws_account_worker::config::Settings::from_toml(example)
        .unwrap_or_else(|e| panic!("the Multi-Payer example: {e}"));
    assert_eq!(settings.payers.len(), 2, "default and opco-de");
    assert!(settings.marketplaces["MP-91673"].multi_payer);
}
