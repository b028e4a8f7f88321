//! docs/CONFIGURATION.md lists every config key with its real default and
//! the environment variables that set it, and nothing else.

use std::collections::BTreeMap;

use chorus_core::config::Config;
use serde_json::Value;

/// `section.key` → (default literal, environment column) from the doc's
/// tables: rows `| \`key\` | \`default\` | env | what |`.
fn documented() -> BTreeMap<String, (String, String)> {
    let text = include_str!("../../docs/CONFIGURATION.md");
    let mut rows = BTreeMap::new();
    let mut in_key_table = false;
    for line in text.lines() {
        if line.starts_with("| key | default | environment |") {
            in_key_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_key_table = false;
            continue;
        }
        if !in_key_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        assert!(cells.len() >= 4, "malformed row: {line}");
        let key = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_string();
        let default = cells[1].trim_matches('`').to_string();
        let previous = rows.insert(key.clone(), (default, cells[2].to_string()));
        assert!(previous.is_none(), "{key} documented twice");
    }
    rows
}

#[test]
fn every_key_is_documented_with_its_default_and_variables() {
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let docs = documented();
    let mut seen = 0;
    for (section, keys) in defaults.as_object().unwrap() {
        for (key, value) in keys.as_object().unwrap() {
            let dotted = format!("{section}.{key}");
            let (default, env) = docs
                .get(&dotted)
                .unwrap_or_else(|| panic!("docs/CONFIGURATION.md lacks {dotted}"));
            let parsed: toml::Value = toml::from_str(&format!("v = {default}"))
                .unwrap_or_else(|e| panic!("{dotted}: default `{default}` is not TOML: {e}"));
            let parsed = serde_json::to_value(&parsed["v"]).unwrap();
            assert_eq!(
                &parsed, value,
                "{dotted}: documented default vs Config::default()"
            );
            let long = format!(
                "`CHORUS_{}_{}`",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            );
            assert!(env.contains(&long), "{dotted}: {long} not in {env}");
            // Every variable named must really set this key.
            for var in env.split(", ").map(|v| v.trim_matches('`')) {
                let probe = probe_value(&dotted, value);
                let loaded = Config::load(None, [(var.to_string(), probe.clone())])
                    .unwrap_or_else(|e| panic!("{var}={probe}: {e}"));
                assert!(
                    loaded.warnings.is_empty(),
                    "{var} is not a key: {:?}",
                    loaded.warnings
                );
                let got = serde_json::to_value(&loaded.config).unwrap()[section][key].clone();
                assert_ne!(&got, value, "{var} did not change {dotted}");
            }
            seen += 1;
        }
    }
    assert_eq!(
        seen,
        docs.len(),
        "documented keys that do not exist: {:?}",
        {
            docs.keys()
                .filter(|k| {
                    let (s, f) = k.split_once('.').unwrap_or_default();
                    defaults.get(s).and_then(|s| s.get(f)).is_none()
                })
                .collect::<Vec<_>>()
        }
    );
}

/// A valid value different from the default `v`, as an env string.
fn probe_value(key: &str, v: &Value) -> String {
    match v {
        // A list of tables, set from the environment as JSON.
        Value::Array(_) if key == "auth.policies" => {
            r#"[{"name":"p","topic":"room:{id}:*","actions":["join"],"claims":{"rooms":"{id}"}}]"#
                .into()
        }
        Value::Bool(b) => (!b).to_string(),
        Value::Number(n) => {
            // Stay inside every range check: a bit above the default (or
            // below, for the values with an upper bound at their default).
            let n = n.as_u64().unwrap_or(0);
            match n {
                0 => "1".into(),
                50 => "40".into(), // rooms.peak_exit_per_s stays below enter
                4096 => "2048".into(),
                n => (n + 1).to_string(),
            }
        }
        Value::Array(_) => "moderation".into(),
        Value::String(s) if s == "sqlite" => "scylla".into(),
        Value::String(s) if s == "mask" => "reject".into(),
        Value::String(s) if s == "chorus" => "chorus_test".into(),
        Value::String(s) => format!("{s}x"),
        Value::Null | Value::Object(_) => String::new(),
    }
}
