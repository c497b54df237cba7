//! The HTML report: one self-contained page (inline CSS and SVG, no scripts, no external
//! assets) with the key tables and charts over time: latency percentiles, throughput,
//! per-backend share, and stickyd's RSS, with scenario events marked.
//!
//! Pure: returns a string.

use std::fmt::Write as _;

use crate::report::{Report, fmt_f, fmt_int, fmt_kib, fmt_us};
use crate::stats::share;
use crate::svg::{Chart, Marker, PALETTE, Series, esc, line_chart};

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:960px;color:#222}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}\
td:first-child,th:first-child{text-align:left}.meta{color:#555}pre{background:#f6f6f6;padding:10px;overflow-x:auto}\
.bad{color:#c00;font-weight:bold}";

/// The page for `r`.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>stickyd load report</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(o, "<h1>stickyd load report</h1>");
    let _ = write!(
        o,
        "<p class=\"meta\">{} · {} · {}s measured after {}s warmup{}</p>",
        esc(&match &r.mode.host {
            Some(h) => format!("{} {} (Host: {h})", r.mode.kind, r.mode.target),
            None => format!("{} {}", r.mode.kind, r.mode.target),
        }),
        esc(&if r.load.model == "open" {
            format!(
                "open loop {} req/s (max {} in flight)",
                fmt_f(r.load.rate.unwrap_or(0.0), 0),
                r.load.max_inflight.unwrap_or(0)
            )
        } else {
            format!(
                "closed loop, {} connections",
                r.load.concurrency.unwrap_or(0)
            )
        }),
        fmt_f(r.summary.measured_s, 1),
        fmt_f(r.load.warmup_s, 1),
        if r.summary.interrupted {
            " · <span class=\"bad\">interrupted</span>"
        } else {
            ""
        }
    );

    let s = &r.summary;
    o.push_str("<h2>Summary</h2><table>");
    row(&mut o, &["requests/s", &fmt_f(s.requests_per_s, 1)]);
    row(&mut o, &["responses", &fmt_int(s.responses)]);
    row(
        &mut o,
        &[
            "errors",
            &format!("{} ({}%)", fmt_int(s.errors), fmt_f(s.error_pct, 3)),
        ],
    );
    row(&mut o, &["users started", &fmt_int(s.users_started)]);
    row(&mut o, &["sessions", &fmt_int(s.sessions)]);
    row(
        &mut o,
        &[
            "affinity violations",
            &format!(
                "{} (re-pins {}, failover {})",
                fmt_int(r.affinity.violations),
                fmt_int(r.affinity.repins),
                fmt_int(r.affinity.failover_repins)
            ),
        ],
    );
    if r.state.measured {
        row(
            &mut o,
            &[
                "sessions whose state was lost",
                &format!(
                    "{} of {} checked ({}%)",
                    fmt_int(r.state.sessions_lost),
                    fmt_int(r.state.sessions_checked),
                    fmt_f(r.state.lost_pct, 3)
                ),
            ],
        );
    }
    if let Some(rep) = &r.replication {
        row(
            &mut o,
            &[
                "takeovers",
                &format!(
                    "{} (replica promoted {}, no replica {})",
                    fmt_int(rep.takeovers),
                    fmt_int(rep.takeovers_promoted),
                    fmt_int(rep.takeovers_no_replica)
                ),
            ],
        );
    }
    for k in &r.recovery {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{}ms", fmt_f(v, 1)));
        row(
            &mut o,
            &[
                &format!("kill {} at {:+.3}s: first takeover", k.backend, k.kill_t_s),
                &format!(
                    "{} (first failover response {})",
                    ms(k.first_takeover_ms),
                    ms(k.first_failover_ms)
                ),
            ],
        );
    }
    if let Some(m) = &r.memory {
        row(
            &mut o,
            &[
                "stickyd RSS start / peak / end",
                &format!(
                    "{} / {} / {}",
                    fmt_kib(m.rss_start_kib),
                    fmt_kib(m.rss_peak_kib),
                    fmt_kib(m.rss_end_kib)
                ),
            ],
        );
    }
    o.push_str("</table>");

    let _ = write!(
        o,
        "<h2>Latency</h2><p class=\"meta\">recorded {}</p><table>",
        esc(&r.latency.basis)
    );
    head(&mut o, &["", "p50", "p90", "p99", "p99.9", "max"]);
    let mut lat = |name: &str, p: &crate::stats::Percentiles| {
        row(
            &mut o,
            &[
                name,
                &fmt_us(p.p50),
                &fmt_us(p.p90),
                &fmt_us(p.p99),
                &fmt_us(p.p999),
                &fmt_us(p.max),
            ],
        );
    };
    lat("recorded", &r.latency.recorded);
    if let Some(c) = &r.latency.corrected {
        lat(
            &format!("corrected (wrk method, interval {})", fmt_us(c.interval_us)),
            &c.percentiles,
        );
    }
    if let Some(p) = &r.latency.service {
        lat("service time", p);
    }
    if let Some(p) = &r.latency.send_lag {
        lat("send lag", p);
    }
    o.push_str("</table>");

    o.push_str("<h2>Backends</h2><table>");
    head(
        &mut o,
        &["backend", "requests", "share", "sessions", "share"],
    );
    for b in &r.backends {
        row(
            &mut o,
            &[
                &b.id,
                &fmt_int(b.requests),
                &format!("{}%", fmt_f(b.request_share_pct, 1)),
                &fmt_int(b.sessions),
                &format!("{}%", fmt_f(b.session_share_pct, 1)),
            ],
        );
    }
    if r.unknown_backend.requests > 0 {
        row(
            &mut o,
            &[
                "(unknown)",
                &fmt_int(r.unknown_backend.requests),
                &format!(
                    "{}%",
                    fmt_f(share(r.unknown_backend.requests, s.responses), 1)
                ),
                &fmt_int(r.unknown_backend.sessions),
                &format!(
                    "{}%",
                    fmt_f(share(r.unknown_backend.sessions, s.sessions), 1)
                ),
            ],
        );
    }
    o.push_str("</table>");
    let _ = write!(
        o,
        "<p>imbalance (max/mean): requests {}, sessions {}</p>",
        r.imbalance.requests.map_or("-".into(), |v| fmt_f(v, 3)),
        r.imbalance.sessions.map_or("-".into(), |v| fmt_f(v, 3))
    );

    if let Some(rep) = &r.replication {
        let _ = write!(
            o,
            "<h2>Replication (backups {})</h2><p>replica pushes ok {}, failed {}; unreadable X-Stickyd-Backup {}; replicas received {}; requests without a takeover for a session whose replica was there {}</p><table>",
            rep.backups,
            fmt_int(rep.pushes_ok),
            fmt_int(rep.pushes_failed),
            fmt_int(rep.bad_backup_header),
            fmt_int(rep.replicas_received),
            fmt_int(rep.unknown_with_replica)
        );
        head(
            &mut o,
            &["push latency", "p50", "p90", "p99", "p99.9", "max"],
        );
        let p = &rep.push_latency;
        row(
            &mut o,
            &[
                "before answering",
                &fmt_us(p.p50),
                &fmt_us(p.p90),
                &fmt_us(p.p99),
                &fmt_us(p.p999),
                &fmt_us(p.max),
            ],
        );
        o.push_str("</table><table>");
        head(
            &mut o,
            &[
                "backend",
                "promoted",
                "no replica",
                "pushes ok",
                "failed",
                "received",
                "sessions held",
                "replicas held",
            ],
        );
        for b in &rep.backends {
            row(
                &mut o,
                &[
                    &b.id,
                    &fmt_int(b.takeovers_promoted),
                    &fmt_int(b.takeovers_no_replica),
                    &fmt_int(b.pushes_ok),
                    &fmt_int(b.pushes_failed),
                    &fmt_int(b.replicas_received),
                    &fmt_int(b.sessions_held as u64),
                    &fmt_int(b.replicas_held as u64),
                ],
            );
        }
        o.push_str("</table>");
    }

    o.push_str("<h2>Over time</h2>");
    for chart in charts(r) {
        o.push_str("<div>");
        o.push_str(&line_chart(&chart));
        o.push_str("</div>");
    }

    o.push_str("<h2>Events</h2>");
    if r.events.is_empty() {
        o.push_str("<p>none</p>");
    } else {
        o.push_str("<table>");
        head(&mut o, &["time", "event", "result", "detail"]);
        for e in &r.events {
            row(
                &mut o,
                &[
                    &format!("{:+.3}s", e.t_s),
                    &e.action,
                    if e.ok { "ok" } else { "FAILED" },
                    &e.detail,
                ],
            );
        }
        o.push_str("</table>");
    }
    if let Some(p) = &r.periodic_reloads {
        let _ = write!(
            o,
            "<p>reload every {} ms: {} SIGHUPs sent, {} failed (not drawn on the charts)</p>",
            p.every_ms,
            fmt_int(p.sent),
            fmt_int(p.failed)
        );
    }
    let _ = writeln!(
        o,
        "<h2>Full report</h2><pre>{}</pre></body></html>",
        esc(&r.render_text())
    );
    o
}

fn row(o: &mut String, cells: &[&str]) {
    o.push_str("<tr>");
    for c in cells {
        let _ = write!(o, "<td>{}</td>", esc(c));
    }
    o.push_str("</tr>");
}

fn head(o: &mut String, cells: &[&str]) {
    o.push_str("<tr>");
    for c in cells {
        let _ = write!(o, "<th>{}</th>", esc(c));
    }
    o.push_str("</tr>");
}

/// The charts of `r`, each with the scenario events marked.
pub fn charts(r: &Report) -> Vec<Chart> {
    let x_max = r.summary.measured_s.max(1.0);
    let markers: Vec<Marker> = r
        .events
        .iter()
        .map(|e| Marker {
            x: e.t_s,
            label: e.action.clone(),
        })
        .collect();
    // Each second's value is drawn at its middle.
    let mid = |t: u64| t as f64 + 0.5;
    let ms = |us: u64| us as f64 / 1000.0;
    let lat = |name: &str, color: &str, f: &dyn Fn(&crate::report::SecondRow) -> u64| Series {
        name: name.into(),
        color: color.into(),
        points: r
            .series
            .iter()
            .map(|s| (mid(s.t_s), (s.responses > 0).then(|| ms(f(s)))))
            .collect(),
    };
    let mut out = vec![
        Chart {
            title: "Latency per second".into(),
            x_label: "seconds since the start of measurement".into(),
            y_label: "latency (ms)".into(),
            x_max,
            y_min_top: 0.0,
            series: vec![
                lat("p50", PALETTE[0], &|s| s.p50_us),
                lat("p90", PALETTE[1], &|s| s.p90_us),
                lat("p99", PALETTE[3], &|s| s.p99_us),
            ],
            markers: markers.clone(),
        },
        Chart {
            title: "Requests per second".into(),
            x_label: "seconds since the start of measurement".into(),
            y_label: "requests/s".into(),
            x_max,
            y_min_top: 0.0,
            series: vec![
                Series {
                    name: "responses".into(),
                    color: PALETTE[0].into(),
                    points: r
                        .series
                        .iter()
                        .map(|s| (mid(s.t_s), Some(s.responses as f64 / s.width_s)))
                        .collect(),
                },
                Series {
                    name: "errors".into(),
                    color: PALETTE[3].into(),
                    points: r
                        .series
                        .iter()
                        .map(|s| (mid(s.t_s), Some(s.errors as f64 / s.width_s)))
                        .collect(),
                },
            ],
            markers: markers.clone(),
        },
        Chart {
            title: "Share of requests per backend".into(),
            x_label: "seconds since the start of measurement".into(),
            y_label: "share of the second's responses (%)".into(),
            x_max,
            y_min_top: 100.0,
            series: r
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| Series {
                    name: b.id.clone(),
                    color: PALETTE[i % PALETTE.len()].into(),
                    points: r
                        .series
                        .iter()
                        .map(|s| {
                            let n = s.backends.get(i).copied().unwrap_or(0);
                            (mid(s.t_s), (s.responses > 0).then(|| share(n, s.responses)))
                        })
                        .collect(),
                })
                .collect(),
            markers: markers.clone(),
        },
    ];
    if r.state.sessions_lost > 0 {
        out.push(Chart {
            title: "Sessions whose state was lost, per second".into(),
            x_label: "seconds since the start of measurement".into(),
            y_label: "sessions first seen lost".into(),
            x_max,
            y_min_top: 0.0,
            series: vec![Series {
                name: "state lost".into(),
                color: PALETTE[3].into(),
                points: r
                    .series
                    .iter()
                    .map(|s| (mid(s.t_s), Some(s.state_lost as f64)))
                    .collect(),
            }],
            markers: markers.clone(),
        });
    }
    if let Some(m) = &r.memory {
        out.push(Chart {
            title: "stickyd resident memory".into(),
            x_label: "seconds since the start of measurement".into(),
            y_label: "RSS (MiB)".into(),
            x_max,
            y_min_top: 0.0,
            series: vec![Series {
                name: "RSS".into(),
                color: PALETTE[4].into(),
                points: m
                    .samples
                    .iter()
                    // The last sample is taken just after the end: draw it at the end.
                    .filter(|s| s.t_s >= 0.0 && s.t_s <= x_max + 0.5)
                    .map(|s| (s.t_s.min(x_max), Some(s.kib as f64 / 1024.0)))
                    .collect(),
            }],
            markers,
        });
    }
    out
}
