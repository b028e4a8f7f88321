//! docs/OPERATIONS.md's metric table names every metric the node exports,
//! and nothing it does not.

use std::collections::BTreeSet;

use chorus_core::metrics::{Histogram, HostMetric, Metric, PROCESS_METRICS};

/// Every `` `name` `` (up to a `{`) in the first column of the doc's metric
/// table.
fn documented() -> BTreeSet<String> {
    let text = include_str!("../../docs/OPERATIONS.md");
    let mut names = BTreeSet::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("| metric | type | what |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let first = line.split(" | ").next().unwrap_or_default();
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                names.insert(part.split('{').next().unwrap_or_default().to_string());
            }
        }
    }
    names
}

#[test]
fn every_exported_metric_is_documented_and_nothing_else() {
    let docs = documented();
    let mut exported: BTreeSet<String> = BTreeSet::new();
    exported.insert("chorus_build_info".into());
    exported.extend(Metric::ALL.iter().map(|m| m.name().to_string()));
    exported.extend(HostMetric::ALL.iter().map(|m| m.name().to_string()));
    exported.extend(Histogram::ALL.iter().map(|h| h.name().to_string()));
    exported.extend(PROCESS_METRICS.iter().map(|n| n.to_string()));
    assert!(exported.len() > 30, "{exported:?}");
    let missing: Vec<_> = exported.difference(&docs).collect();
    assert!(missing.is_empty(), "docs/OPERATIONS.md lacks {missing:?}");
    let stale: Vec<_> = docs.difference(&exported).collect();
    assert!(
        stale.is_empty(),
        "docs/OPERATIONS.md names metrics the node does not export: {stale:?}"
    );
}
