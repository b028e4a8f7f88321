//! The room scenarios' Markdown, read from their results files: Chorus
//! against Chorus baselines of the same run, as ratios.

use std::fmt::Write as _;

use super::{Audio, AudioPhase, PresenceMode, RoomOutcome};
use crate::driver::RunResult;
use crate::report::{cell_escape, fmt_num};
use crate::scenario::Params;

/// The presence-churn and audio-flood sections of a suite ("" when the
/// suite has neither).
pub fn tables(runs: &[RunResult]) -> String {
    let mut md = String::new();
    for r in runs {
        let Some(p) = r.params.as_ref().filter(|p| p.scenario.is_room()) else {
            continue;
        };
        let _ = writeln!(
            md,
            "### {} (Chorus only): {}\n",
            p.scenario,
            Params::describe(p)
        );
        match &r.room {
            Some(RoomOutcome::Presence(modes)) => presence(&mut md, modes),
            Some(RoomOutcome::Audio(a)) => audio(&mut md, r, a),
            None => {
                let _ = writeln!(
                    md,
                    "did not run: {}\n",
                    cell_escape(r.failure.as_deref().unwrap_or("no figures"))
                );
            }
        }
        if !r.version.is_empty() {
            let _ = writeln!(
                md,
                "Version: `{}`\n",
                r.version.lines().next().unwrap_or_default()
            );
        }
    }
    md
}

fn presence(md: &mut String, modes: &[PresenceMode]) {
    md.push_str(
        "Plain presence is the node with `presence.large_room_threshold` above the room size (what Supabase does); selective observers `presence_subscribe` to their keys; the relevant-set column is the default threshold, where unsubscribed clients of a large room get a relevant set and `presence_count`. The plain and selective columns are one node and one run (the non-churning members split in two halves, odd ids subscribing); the relevant-set column is a second, fresh node with the same load. *Diff latency*: the churner's `track` push (its time in the meta) to an observer reading the key in a `presence_diff`. *Bytes*: everything each observer (a member that does not churn) read from its socket from the start of the churn to the end of the drain.\n\n",
    );
    let label = |m: &PresenceMode| {
        match m.mode.as_str() {
            "plain" => "plain presence",
            "selective" => "selective presence",
            "relevant-set" => "large-room relevant set",
            other => other,
        }
        .to_string()
    };
    let mut head = String::from("| |");
    let mut sep = String::from("|---|");
    for m in modes {
        let _ = write!(head, " {} |", label(m));
        sep.push_str("---:|");
    }
    let _ = writeln!(md, "{head}\n{sep}");
    let row = |md: &mut String, name: &str, cell: &dyn Fn(&PresenceMode) -> String| {
        let _ = write!(md, "| {name} |");
        for m in modes {
            let _ = write!(md, " {} |", cell(m));
        }
        md.push('\n');
    };
    row(md, "node `presence.large_room_threshold`", &|m| {
        m.large_room_threshold.clone()
    });
    row(md, "status", &|m| match &m.failure {
        None => "ran".into(),
        Some(f) => format!("did not run: {}", cell_escape(f)),
    });
    let ok = |m: &PresenceMode, v: String| {
        if m.failure.is_none() {
            v
        } else {
            "—".into()
        }
    };
    row(md, "members joined", &|m| {
        fmt_num(m.members_joined as f64, 0)
    });
    row(md, "churn events/s (leaves + rejoins)", &|m| {
        ok(m, fmt_num(m.churn_events_per_s, 1))
    });
    row(md, "diff latency p50 (ms)", &|m| {
        ok(m, fmt_num(m.diff_latency.p50_ms, 2))
    });
    row(md, "diff latency p99 (ms)", &|m| {
        ok(m, fmt_num(m.diff_latency.p99_ms, 2))
    });
    row(md, "churner joins seen in diffs (all observers)", &|m| {
        ok(m, fmt_num(m.diff_joins_seen as f64, 0))
    });
    row(md, "bytes received per observer", &|m| {
        ok(m, fmt_num(m.bytes_per_observer, 0))
    });
    row(md, "bytes/s per observer", &|m| {
        ok(m, fmt_num(m.bytes_per_observer_per_s, 0))
    });
    row(md, "presence_diff frames per observer", &|m| {
        ok(m, fmt_num(m.diff_frames_per_observer, 1))
    });
    row(
        md,
        "plain ÷ this, bytes per observer",
        &|m| match RoomOutcome::bytes_ratio(modes, &m.mode) {
            Some(x) => format!("{x:.1}×"),
            None => "—".into(),
        },
    );
    row(md, "server peak RSS (MiB)", &|m| {
        fmt_num(m.rss_peak_kib as f64 / 1024.0, 1)
    });
    let goal = match RoomOutcome::bytes_ratio(modes, "selective") {
        Some(x) if x >= 10.0 => format!("{x:.1}×, met"),
        Some(x) => format!("{x:.1}×, not met"),
        None => "not measured (a column did not run)".into(),
    };
    let _ = writeln!(
        md,
        "\nGoal: plain ÷ selective bytes per observer ≥ 10×: **{goal}**.\n"
    );
}

fn phase_cells(
    md: &mut String,
    name: &str,
    a: &AudioPhase,
    b: &AudioPhase,
    get: fn(&AudioPhase) -> f64,
    digits: usize,
) {
    let (x, y) = (get(a), get(b));
    let ratio = if x > 0.0 {
        format!("{:.2}×", y / x)
    } else {
        "—".into()
    };
    let _ = writeln!(
        md,
        "| {name} | {} | {} | {ratio} |",
        fmt_num(x, digits),
        fmt_num(y, digits)
    );
}

fn audio(md: &mut String, r: &RunResult, a: &Audio) {
    md.push_str(
        "One node, one run: the host's `playback` broadcasts (send time in the payload) to every listener, first alone, then while the flooders send `reaction` broadcasts at the node's per-socket rate limit. *Latency*: host send to listener receive.\n\n",
    );
    match &r.failure {
        None => md.push_str("Status: ran.\n\n"),
        Some(f) => {
            let _ = writeln!(md, "Status: did not run: {}\n", cell_escape(f));
        }
    }
    let _ = writeln!(
        md,
        "| playback | without flood | with flood | with ÷ without |\n|---|---:|---:|---:|"
    );
    let (w, f) = (&a.without_flood, &a.with_flood);
    phase_cells(md, "published", w, f, |p| p.playbacks_sent as f64, 0);
    phase_cells(
        md,
        "delivered (% of published × listeners)",
        w,
        f,
        |p| p.delivered_pct,
        2,
    );
    phase_cells(md, "latency p50 (ms)", w, f, |p| p.latency.p50_ms, 2);
    phase_cells(md, "latency p90 (ms)", w, f, |p| p.latency.p90_ms, 2);
    phase_cells(md, "latency p99 (ms)", w, f, |p| p.latency.p99_ms, 2);
    phase_cells(md, "latency p99.9 (ms)", w, f, |p| p.latency.p999_ms, 2);
    phase_cells(md, "latency max (ms)", w, f, |p| p.latency.max_ms, 2);
    let accepted = a.reactions_sent.saturating_sub(a.reactions_rate_limited);
    let _ = writeln!(
        md,
        "\n| reactions (flood phase) | |\n|---|---:|\n\
| sent by the flooders | {} |\n\
| refused `rate_limited` | {} |\n\
| listeners joined | {} |\n\
| delivered one by one (`reaction`, all listeners) | {} |\n\
| `reaction_counts` frames received | {} |\n\
| reactions carried in `reaction_counts` | {} |\n\
| one by one or counted (% of accepted {} × listeners) | {} |\n\
| peak-mode `system` pushes seen by listeners | {} |",
        fmt_num(a.reactions_sent as f64, 0),
        fmt_num(a.reactions_rate_limited as f64, 0),
        fmt_num(a.listeners_joined as f64, 0),
        fmt_num(a.reactions_individual as f64, 0),
        fmt_num(a.reaction_counts_frames as f64, 0),
        fmt_num(a.reactions_counted as f64, 0),
        fmt_num(accepted as f64, 0),
        fmt_num(a.reactions_delivered_pct, 2),
        fmt_num(a.peak_mode_entries_seen as f64, 0),
    );
    let goal = if r.failure.is_some() || a.p99_ratio == 0.0 {
        "not measured".to_string()
    } else if a.p99_ratio <= 2.0 {
        format!("{:.2}×, met", a.p99_ratio)
    } else {
        format!("{:.2}×, not met", a.p99_ratio)
    };
    let _ = writeln!(
        md,
        "\nGoal: playback p99 with the flood ≤ 2× without: **{goal}**.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::System;

    fn mode(name: &str, bytes: f64, failure: Option<&str>) -> PresenceMode {
        PresenceMode {
            mode: name.into(),
            bytes_per_observer: bytes,
            failure: failure.map(String::from),
            ..PresenceMode::default()
        }
    }

    #[test]
    fn presence_table_has_ratios_and_reports_a_refused_mode() {
        let run = RunResult {
            system: Some(System::Chorus),
            params: Some(Params::presence_churn(100, 10, 5.0, 1.0)),
            room: Some(RoomOutcome::Presence(vec![
                mode("plain", 50_000.0, None),
                mode("selective", 2_000.0, None),
                mode("relevant-set", 10_000.0, None),
            ])),
            ..RunResult::default()
        };
        let md = tables(&[run]);
        assert!(
            md.contains("| plain ÷ this, bytes per observer | 1.0× | 25.0× | 5.0× |"),
            "{md}"
        );
        assert!(md.contains("**25.0×, met**"), "{md}");
        let refused = RunResult {
            system: Some(System::Chorus),
            params: Some(Params::presence_churn(100, 10, 5.0, 1.0)),
            room: Some(RoomOutcome::Presence(vec![
                mode("plain", 50_000.0, None),
                mode(
                    "selective",
                    0.0,
                    Some("the node refused presence_subscribe"),
                ),
            ])),
            ..RunResult::default()
        };
        let md = tables(&[refused]);
        assert!(
            md.contains("did not run: the node refused presence_subscribe"),
            "{md}"
        );
        assert!(md.contains("not measured (a column did not run)"), "{md}");
    }

    #[test]
    fn audio_table_compares_phases() {
        let mut a = Audio::default();
        a.without_flood.latency.p99_ms = 4.0;
        a.with_flood.latency.p99_ms = 6.0;
        a.p99_ratio = 1.5;
        let run = RunResult {
            system: Some(System::Chorus),
            params: Some(Params::audio_flood(10, 2, 20.0, 100.0, 1.0)),
            room: Some(RoomOutcome::Audio(Box::new(a))),
            ..RunResult::default()
        };
        let md = tables(&[run]);
        assert!(
            md.contains("| latency p99 (ms) | 4.00 | 6.00 | 1.50× |"),
            "{md}"
        );
        assert!(md.contains("**1.50×, met**"), "{md}");
    }
}
