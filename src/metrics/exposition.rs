//! The Prometheus text exposition (format 0.0.4) of every family in [`super::FAMILIES`].
//!
//! Pure: it writes what [`Metrics`] holds and what [`Readings`] brings, and reads no other
//! state and no clock. Every family is announced with `# HELP` and `# TYPE` from its
//! [`Family`], and every label value is escaped, so a backend id can never break a line.

use std::fmt::{Display, Write as _};

use super::{
    ACCESS_LOG_DROPPED, AFFINITY, BACKEND_ADMIN_STATE, BACKEND_DRAINED, BACKEND_FAILURES,
    BACKEND_IN_FLIGHT, BACKEND_PINS, BACKEND_REQUESTS, BACKEND_RESPONSES, BACKEND_SESSIONS,
    BACKEND_UP, BACKEND_WEIGHT, BACKENDS, BUILD_INFO, CONNECTIONS, DISCOVERY_LOOKUPS, Family,
    IMBALANCE, LATENCY_BUCKETS, Metrics, REPINS, REQUEST_DURATION, RESPONSES, RETRIES, TAKEOVERS,
    UPSTREAM_ERRORS,
};
use crate::affinity::{AdminState, Outcome, Takeover};
use crate::error::UpstreamKind;

/// One backend's values for the exposition, read once from its live state by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendSample<'a> {
    /// The backend id (the `backend` label).
    pub id: &'a str,
    /// Its pool's name (the `pool` label).
    pub pool: &'a str,
    /// Configured weight.
    pub weight: u32,
    /// Passes health checks.
    pub up: bool,
    /// The admin state in force.
    pub state: AdminState,
    /// Draining and quiet for `drain_quiet`.
    pub drained: bool,
    /// Requests in flight now.
    pub in_flight: i64,
    /// Requests sent (attempts, retries included).
    pub requests: u64,
    /// Requests that got no response.
    pub failures: u64,
    /// Responses by status class, index 0 for 1xx .. 4 for 5xx.
    pub responses: [u64; 5],
    /// Sessions pinned here since start.
    pub pins: u64,
    /// Distinct sessions served recently (estimate).
    pub sessions: u64,
}

/// One pool's values for the exposition, read once from its live state by the caller.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolSample<'a> {
    /// The pool's name (the `pool` label).
    pub name: &'a str,
    /// Requests by affinity outcome, in [`Outcome::ALL`] order.
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Sessions moved to another backend.
    pub repins: u64,
    /// Takeovers by reason, in [`Takeover::ALL`] order.
    pub takeovers: [u64; Takeover::ALL.len()],
    /// max/mean of its usable backends' recent request rates.
    pub imbalance: f64,
    /// Its backends from the config file and from DNS.
    pub backends: [usize; 2],
}

/// One `[[discover]]` entry's lookups for the exposition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LookupSample<'a> {
    /// Its pool's name.
    pub pool: &'a str,
    /// The entry's label (`dns:NAME:PORT`, `srv:NAME`).
    pub name: &'a str,
    /// Lookups by outcome: ok, empty, failed.
    pub counts: [u64; 3],
}

/// What an exposition shows besides the counters in [`Metrics`]: values owned elsewhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readings<'a> {
    /// Client connections open now.
    pub connections: usize,
    /// Every backend of the snapshot, in config order.
    pub backends: &'a [BackendSample<'a>],
    /// Every pool of the snapshot, in config order.
    pub pools: &'a [PoolSample<'a>],
    /// Every `[[discover]]` entry's lookups.
    pub lookups: &'a [LookupSample<'a>],
    /// Lines the access log dropped, or `None` when the access log is off (the family is then
    /// left out).
    pub access_log_dropped: Option<u64>,
}

/// The `class` label values, index 0 for 1xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `state` label values of [`BACKEND_ADMIN_STATE`], in the order they are written.
const ADMIN_STATES: [(AdminState, &str); 3] = [
    (AdminState::Active, "active"),
    (AdminState::Draining, "draining"),
    (AdminState::Disabled, "disabled"),
];

impl Metrics {
    /// The text exposition of every family: these counters plus `r`.
    pub(crate) fn render(&self, r: &Readings<'_>) -> String {
        let mut w = Writer(String::with_capacity(8192));
        w.header(&BUILD_INFO);
        w.sample(
            BUILD_INFO.name,
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        w.header(&CONNECTIONS);
        w.sample(CONNECTIONS.name, &[], r.connections);

        let bs = r.backends;
        let class = Some(("class", &CLASSES[..]));
        w.per_backend(&BACKEND_RESPONSES, bs, class, |b, i| b.responses[i]);
        w.per_backend(&BACKEND_REQUESTS, bs, None, |b, _| b.requests);
        w.per_backend(&BACKEND_FAILURES, bs, None, |b, _| b.failures);
        w.per_backend(&BACKEND_IN_FLIGHT, bs, None, |b, _| b.in_flight);
        w.per_backend(&BACKEND_UP, bs, None, |b, _| u8::from(b.up));
        w.per_backend(&BACKEND_WEIGHT, bs, None, |b, _| b.weight);
        w.per_backend(&BACKEND_PINS, bs, None, |b, _| b.pins);
        w.per_backend(&BACKEND_SESSIONS, bs, None, |b, _| b.sessions);
        w.per_backend(&BACKEND_DRAINED, bs, None, |b, _| u8::from(b.drained));
        let states = ADMIN_STATES.map(|(_, label)| label);
        w.per_backend(
            &BACKEND_ADMIN_STATE,
            bs,
            Some(("state", &states)),
            |b, i| u8::from(b.state == ADMIN_STATES[i].0),
        );

        w.header(&RESPONSES);
        for (class, label) in (1..=5).zip(CLASSES) {
            w.sample(RESPONSES.name, &[("class", label)], self.responses(class));
        }
        w.histogram(&REQUEST_DURATION, self);
        w.header(&AFFINITY);
        for p in r.pools {
            for (o, n) in Outcome::ALL.iter().zip(p.outcomes) {
                w.sample(
                    AFFINITY.name,
                    &[("pool", p.name), ("outcome", o.as_str())],
                    n,
                );
            }
        }
        w.header(&REPINS);
        for p in r.pools {
            w.sample(REPINS.name, &[("pool", p.name)], p.repins);
        }
        w.header(&TAKEOVERS);
        for p in r.pools {
            for (t, n) in Takeover::ALL.iter().zip(p.takeovers) {
                w.sample(
                    TAKEOVERS.name,
                    &[("pool", p.name), ("reason", t.as_str())],
                    n,
                );
            }
        }
        w.header(&RETRIES);
        w.sample(RETRIES.name, &[], self.retries());
        w.header(&UPSTREAM_ERRORS);
        for k in UpstreamKind::ALL {
            w.sample(
                UPSTREAM_ERRORS.name,
                &[("kind", k.as_str())],
                self.upstream_errors(k),
            );
        }
        w.header(&IMBALANCE);
        for p in r.pools {
            w.sample(IMBALANCE.name, &[("pool", p.name)], p.imbalance);
        }
        w.header(&BACKENDS);
        for p in r.pools {
            for (source, n) in ["config", "dns"].iter().zip(p.backends) {
                w.sample(BACKENDS.name, &[("pool", p.name), ("source", source)], n);
            }
        }
        w.header(&DISCOVERY_LOOKUPS);
        for l in r.lookups {
            for (outcome, n) in ["ok", "empty", "failed"].iter().zip(l.counts) {
                w.sample(
                    DISCOVERY_LOOKUPS.name,
                    &[("pool", l.pool), ("name", l.name), ("outcome", outcome)],
                    n,
                );
            }
        }
        if let Some(n) = r.access_log_dropped {
            w.header(&ACCESS_LOG_DROPPED);
            w.sample(ACCESS_LOG_DROPPED.name, &[], n);
        }
        w.0
    }
}

/// Appends exposition lines to a string (writing to a `String` cannot fail).
struct Writer(String);

impl Writer {
    /// `# HELP` and `# TYPE` of `f`.
    fn header(&mut self, f: &Family) {
        let _ = writeln!(
            self.0,
            "# HELP {} {}\n# TYPE {} {}",
            f.name,
            f.help,
            f.name,
            f.kind.as_str()
        );
    }

    /// One sample line `name{labels} value`, label values escaped.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_into(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A per-backend family: its header, then for each backend one sample labelled
    /// `{backend="ID",pool="POOL"}`, or, with `by = Some((label, values))`, one sample per label
    /// value labelled `{backend="ID",pool="POOL",label="VALUE"}`. `value(b, i)` is the value for backend `b` and
    /// label value `i` (0 without `by`).
    fn per_backend<V: Display>(
        &mut self,
        f: &Family,
        backends: &[BackendSample<'_>],
        by: Option<(&str, &[&str])>,
        value: impl Fn(&BackendSample<'_>, usize) -> V,
    ) {
        self.header(f);
        for b in backends {
            match by {
                None => self.sample(f.name, &[("backend", b.id), ("pool", b.pool)], value(b, 0)),
                Some((label, values)) => {
                    for (i, v) in values.iter().enumerate() {
                        self.sample(
                            f.name,
                            &[("backend", b.id), ("pool", b.pool), (label, v)],
                            value(b, i),
                        );
                    }
                }
            }
        }
    }

    /// A histogram family from the latency histogram: cumulative `_bucket{le}` lines ending
    /// with `+Inf`, then `_sum` and `_count`.
    fn histogram(&mut self, f: &Family, m: &Metrics) {
        self.header(f);
        let bucket = format!("{}_bucket", f.name);
        let cum = m.latency.cumulative();
        for (le, n) in LATENCY_BUCKETS.iter().zip(cum.iter()) {
            self.sample(&bucket, &[("le", &le.to_string())], n);
        }
        let total = cum[LATENCY_BUCKETS.len()];
        self.sample(&bucket, &[("le", "+Inf")], total);
        self.sample(&format!("{}_sum", f.name), &[], m.latency.sum_secs());
        self.sample(&format!("{}_count", f.name), &[], total);
    }
}

/// Appends `s` as a label value: `\`, `"` and newlines escaped.
fn escape_into(o: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ProxyError;
    use crate::metrics::{FAMILIES, Type};

    fn sample(id: &str) -> BackendSample<'_> {
        BackendSample {
            id,
            pool: "default",
            weight: 1,
            up: true,
            state: AdminState::Active,
            drained: false,
            in_flight: 0,
            requests: 0,
            failures: 0,
            responses: [0; 5],
            pins: 0,
            sessions: 0,
        }
    }

    /// A known state: two backends, a few of every process-wide counter.
    fn known() -> String {
        let m = Metrics::default();
        m.retry();
        m.retry();
        m.upstream_error(&ProxyError::Timeout);
        m.upstream_error(&ProxyError::Connect(String::new()));
        m.upstream_error(&ProxyError::NoBackend);
        m.response(200);
        m.response(502);
        m.latency.record(Duration::from_millis(3));
        m.latency.record(Duration::from_secs(20));
        let backends = [
            BackendSample {
                weight: 3,
                state: AdminState::Disabled,
                in_flight: 1,
                requests: 7,
                failures: 1,
                responses: [1, 2, 1, 1, 1],
                pins: 1,
                sessions: 1,
                ..sample("a")
            },
            BackendSample {
                up: false,
                state: AdminState::Draining,
                drained: true,
                pool: "shop",
                ..sample("b.2")
            },
        ];
        let mut outcomes = [0; Outcome::ALL.len()];
        outcomes[Outcome::New.index()] = 1;
        outcomes[Outcome::BadMac.index()] = 1;
        let pools = [
            PoolSample {
                name: "default",
                outcomes,
                repins: 1,
                takeovers: [2, 0, 1, 0],
                imbalance: 1.25,
                backends: [1, 0],
            },
            PoolSample {
                name: "shop",
                outcomes: [0; Outcome::ALL.len()],
                repins: 0,
                takeovers: [0; Takeover::ALL.len()],
                imbalance: 0.0,
                backends: [0, 1],
            },
        ];
        let lookups = [LookupSample {
            pool: "shop",
            name: "dns:app.shop:80",
            counts: [5, 1, 2],
        }];
        m.render(&Readings {
            connections: 3,
            backends: &backends,
            pools: &pools,
            lookups: &lookups,
            access_log_dropped: Some(4),
        })
    }

    /// The lines of `text` from `# HELP name` up to the next `# HELP`.
    fn family_text<'a>(text: &'a str, name: &str) -> &'a str {
        let start = text
            .find(&format!("# HELP {name} "))
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"));
        let rest = &text[start..];
        let end = rest[1..].find("# HELP ").map_or(rest.len(), |i| i + 1);
        &rest[..end]
    }

    #[test]
    fn a_known_state_renders_to_the_exact_text() {
        let text = known();
        assert_eq!(
            family_text(&text, "stickyd_backend_responses_total"),
            "# HELP stickyd_backend_responses_total Responses from each backend by status class.
# TYPE stickyd_backend_responses_total counter
stickyd_backend_responses_total{backend=\"a\",pool=\"default\",class=\"1xx\"} 1
stickyd_backend_responses_total{backend=\"a\",pool=\"default\",class=\"2xx\"} 2
stickyd_backend_responses_total{backend=\"a\",pool=\"default\",class=\"3xx\"} 1
stickyd_backend_responses_total{backend=\"a\",pool=\"default\",class=\"4xx\"} 1
stickyd_backend_responses_total{backend=\"a\",pool=\"default\",class=\"5xx\"} 1
stickyd_backend_responses_total{backend=\"b.2\",pool=\"shop\",class=\"1xx\"} 0
stickyd_backend_responses_total{backend=\"b.2\",pool=\"shop\",class=\"2xx\"} 0
stickyd_backend_responses_total{backend=\"b.2\",pool=\"shop\",class=\"3xx\"} 0
stickyd_backend_responses_total{backend=\"b.2\",pool=\"shop\",class=\"4xx\"} 0
stickyd_backend_responses_total{backend=\"b.2\",pool=\"shop\",class=\"5xx\"} 0
"
        );
        assert_eq!(
            family_text(&text, "stickyd_backend_in_flight"),
            "# HELP stickyd_backend_in_flight Requests in flight on each backend.
# TYPE stickyd_backend_in_flight gauge
stickyd_backend_in_flight{backend=\"a\",pool=\"default\"} 1
stickyd_backend_in_flight{backend=\"b.2\",pool=\"shop\"} 0
"
        );
        assert_eq!(
            family_text(&text, "stickyd_backend_admin_state"),
            "# HELP stickyd_backend_admin_state Admin state of each backend (1 for the state in force).
# TYPE stickyd_backend_admin_state gauge
stickyd_backend_admin_state{backend=\"a\",pool=\"default\",state=\"active\"} 0
stickyd_backend_admin_state{backend=\"a\",pool=\"default\",state=\"draining\"} 0
stickyd_backend_admin_state{backend=\"a\",pool=\"default\",state=\"disabled\"} 1
stickyd_backend_admin_state{backend=\"b.2\",pool=\"shop\",state=\"active\"} 0
stickyd_backend_admin_state{backend=\"b.2\",pool=\"shop\",state=\"draining\"} 1
stickyd_backend_admin_state{backend=\"b.2\",pool=\"shop\",state=\"disabled\"} 0
"
        );
        assert_eq!(
            family_text(&text, "stickyd_upstream_errors_total"),
            "# HELP stickyd_upstream_errors_total Failed upstream attempts by kind.
# TYPE stickyd_upstream_errors_total counter
stickyd_upstream_errors_total{kind=\"connect\"} 1
stickyd_upstream_errors_total{kind=\"reset\"} 0
stickyd_upstream_errors_total{kind=\"protocol\"} 0
stickyd_upstream_errors_total{kind=\"timeout\"} 1
"
        );
        let h = family_text(&text, "stickyd_request_duration_seconds");
        for line in [
            "# TYPE stickyd_request_duration_seconds histogram\n",
            "stickyd_request_duration_seconds_bucket{le=\"0.0025\"} 0\n",
            "stickyd_request_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "stickyd_request_duration_seconds_bucket{le=\"10\"} 1\n",
            "stickyd_request_duration_seconds_bucket{le=\"+Inf\"} 2\n",
            "stickyd_request_duration_seconds_sum 20.003\n",
            "stickyd_request_duration_seconds_count 2\n",
        ] {
            assert!(h.contains(line), "missing {line:?} in\n{h}");
        }
        for line in [
            "stickyd_build_info{version=\"",
            "stickyd_connections 3\n",
            "stickyd_backend_up{backend=\"b.2\",pool=\"shop\"} 0\n",
            "stickyd_backend_drained{backend=\"b.2\",pool=\"shop\"} 1\n",
            "stickyd_backend_weight{backend=\"a\",pool=\"default\"} 3\n",
            "stickyd_responses_total{class=\"5xx\"} 1\n",
            "stickyd_affinity_total{pool=\"default\",outcome=\"bad_mac\"} 1\n",
            "stickyd_affinity_total{pool=\"shop\",outcome=\"bad_mac\"} 0\n",
            "stickyd_repins_total{pool=\"default\"} 1\n",
            "stickyd_repins_total{pool=\"shop\"} 0\n",
            "stickyd_takeovers_total{pool=\"default\",reason=\"down\"} 2\n",
            "stickyd_takeovers_total{pool=\"default\",reason=\"restarted\"} 1\n",
            "stickyd_takeovers_total{pool=\"shop\",reason=\"handoff\"} 0\n",
            "stickyd_retries_total 2\n",
            "stickyd_imbalance_ratio{pool=\"default\"} 1.25\n",
            "stickyd_imbalance_ratio{pool=\"shop\"} 0\n",
            "stickyd_access_log_dropped_total 4\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn every_sample_line_parses_and_belongs_to_an_announced_family() {
        let text = known();
        let mut announced: Vec<(&str, &str)> = Vec::new();
        for l in text.lines() {
            if let Some(t) = l.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                announced.push((name, kind));
                continue;
            }
            if l.starts_with("# HELP ") {
                continue;
            }
            // name{k="v",...} value, or name value
            let (series, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad value in {l:?}");
            let name = series.split('{').next().unwrap();
            assert!(
                name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
                "bad name in {l:?}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    let inner = labels.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
                    let inner = inner.unwrap_or_else(|| panic!("bad labels in {l:?}"));
                    for pair in inner.split(',') {
                        let (k, v) = pair.split_once('=').unwrap();
                        assert!(!k.is_empty() && k.bytes().all(|c| c.is_ascii_lowercase()));
                        assert!(v.len() >= 2 && v.starts_with('"') && v.ends_with('"'));
                    }
                }
            }
            let (family, kind) = *announced.last().expect("a sample before any # TYPE");
            let base = match kind {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name),
                _ => name,
            };
            assert_eq!(base, family, "{l:?} under the wrong # TYPE");
        }
        let table: Vec<(&str, &str)> = FAMILIES.iter().map(|f| (f.name, f.kind.as_str())).collect();
        assert_eq!(announced, table, "every family once, in table order");
    }

    #[test]
    fn the_family_table_is_well_formed() {
        for (i, f) in FAMILIES.iter().enumerate() {
            assert!(f.name.starts_with("stickyd_"), "{f:?}");
            assert!(
                !f.help.is_empty() && !f.help.contains(['\n', '\\']),
                "{f:?}"
            );
            assert!(
                FAMILIES[..i].iter().all(|g| g.name != f.name),
                "{} twice",
                f.name
            );
            assert_eq!(
                f.kind == Type::Counter,
                f.name.ends_with("_total"),
                "counters and only counters end in _total: {f:?}"
            );
        }
    }

    #[test]
    fn the_access_log_family_is_left_out_while_the_log_is_off() {
        let text = Metrics::default().render(&Readings {
            connections: 0,
            backends: &[],
            pools: &[],
            lookups: &[],
            access_log_dropped: None,
        });
        assert!(!text.contains("stickyd_access_log_dropped_total"), "{text}");
        assert!(
            text.contains("# TYPE stickyd_backend_up gauge\n# HELP"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut o = String::new();
        escape_into(&mut o, "a\"b\\c\nd");
        assert_eq!(o, r#"a\"b\\c\nd"#);
        let m = Metrics::default();
        let text = m.render(&Readings {
            connections: 0,
            backends: &[sample("x\"y")],
            pools: &[],
            lookups: &[],
            access_log_dropped: None,
        });
        assert!(
            text.contains("stickyd_backend_up{backend=\"x\\\"y\",pool=\"default\"} 1\n"),
            "{text}"
        );
    }
}
