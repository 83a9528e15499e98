//! What the bank's own metrics say during a rate, read from the Prometheus text its recorder
//! renders in this process: the consumers' backlogs, the slowest calls and where the embedded
//! backends queue (the bus's one connection, each store's writer).

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

/// One sample of a rendered series: its labels and value.
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// Every sample of series `name` in `rendered` (exactly that name, labelled or not).
fn samples(rendered: &str, name: &str) -> Vec<Sample> {
    rendered
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split(',')
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            let value = value.trim().parse::<f64>().ok().filter(|v| v.is_finite())?;
            Some(Sample { labels, value })
        })
        .collect()
}

/// A rendering of the bank's metrics at one moment.
pub(super) struct Reading {
    rendered: String,
}

impl Reading {
    /// Reads the recorder now (nothing without one).
    pub(super) fn now(recorder: Option<&PrometheusHandle>) -> Reading {
        Reading {
            rendered: recorder.map(PrometheusHandle::render).unwrap_or_default(),
        }
    }

    /// The consumers' backlogs as last sampled, by `service/consumer`.
    pub(super) fn backlogs(&self) -> Vec<(String, u64)> {
        samples(&self.rendered, "sterling_consumer_backlog_events")
            .into_iter()
            .filter_map(|s| {
                let name = format!("{}/{}", s.label("service")?, s.label("consumer")?);
                Some((name, s.value.max(0.0) as u64))
            })
            .collect()
    }

    /// The `count` series of summary `name` with the largest maximum (`quantile="1"`), named
    /// by the values of `labels`.
    fn slowest(&self, name: &str, labels: &[&str], count: usize) -> Vec<(String, Duration)> {
        let mut found: Vec<(String, Duration)> = samples(&self.rendered, name)
            .into_iter()
            .filter(|s| s.label("quantile") == Some("1"))
            .filter_map(|s| {
                let named: Option<Vec<&str>> = labels.iter().map(|l| s.label(l)).collect();
                Some((named?.join(" "), Duration::from_secs_f64(s.value.max(0.0))))
            })
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.1));
        found.truncate(count);
        found
    }

    /// The values of counter `name` by the value of `label`.
    fn counts(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        samples(&self.rendered, name)
            .into_iter()
            .filter_map(|s| Some((s.label(label)?.to_string(), s.value)))
            .collect()
    }
}

/// Where the bank spent its time waiting during a rate, from readings at its start and end.
#[derive(Debug, Clone, Default)]
pub struct Contention {
    /// The slowest calls any service handled (their summaries' last minute), by
    /// `service method`, at most three.
    pub slowest_calls: Vec<(String, Duration)>,
    /// Share of the rate's time the embedded bus's one connection was held.
    pub bus_busy: f64,
    /// The same by operation, largest first.
    pub bus_busy_by_op: Vec<(String, f64)>,
    /// How long an operation waited for the bus's connection, on average.
    pub bus_mean_wait: Duration,
    /// Share of the rate's time each store's writer spent committing, busiest first (three).
    pub writers_busy: Vec<(String, f64)>,
    /// The store whose writes queued longest for its writer, on average, and how long.
    pub writer_longest_mean_queue: Option<(String, Duration)>,
    /// Commits and bus operations that held their file longer than [`sterling_storage::embedded::SLOW`],
    /// most first: `bus publish`, `store ledger`.
    pub slow: Vec<(String, f64)>,
    /// Times an embedded SQLite connection waited for a lock another connection of its file
    /// held.
    pub lock_waits: u64,
}

/// How much each of `after`'s counts grew since `before`.
fn growth(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)).max(0.0),
            )
        })
        .collect()
}

/// Growth of counter `name` by `label` between two readings.
fn grown(before: &Reading, after: &Reading, name: &str, label: &str) -> BTreeMap<String, f64> {
    growth(&before.counts(name, label), &after.counts(name, label))
}

/// Microseconds grown, as shares of `elapsed`, largest first.
fn shares(micros: &BTreeMap<String, f64>, elapsed: Duration) -> Vec<(String, f64)> {
    let elapsed_us = (elapsed.as_secs_f64() * 1e6).max(1.0);
    let mut shares: Vec<(String, f64)> = micros
        .iter()
        .map(|(k, us)| (k.clone(), us / elapsed_us))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
}

impl Contention {
    /// What changed from `before` to `after`, `elapsed` apart; `lock_waits` counted meanwhile.
    pub(super) fn between(
        before: &Reading,
        after: &Reading,
        elapsed: Duration,
        lock_waits: u64,
    ) -> Contention {
        let bus = |name| grown(before, after, name, "op");
        let store = |name| grown(before, after, name, "store");
        let bus_busy_by_op = shares(
            &bus("sterling_embedded_bus_held_microseconds_total"),
            elapsed,
        );
        let waited: f64 = bus("sterling_embedded_bus_waited_microseconds_total")
            .values()
            .sum();
        let operations: f64 = bus("sterling_embedded_bus_operations_total").values().sum();
        let mut writers_busy = shares(
            &store("sterling_embedded_store_committing_microseconds_total"),
            elapsed,
        );
        writers_busy.truncate(3);
        let writes = store("sterling_embedded_store_writes_total");
        let writer_longest_mean_queue = store("sterling_embedded_store_queued_microseconds_total")
            .into_iter()
            .filter_map(|(name, us)| {
                let n = writes.get(&name).copied().filter(|n| *n > 0.0)?;
                Some((name, Duration::from_secs_f64(us / n / 1e6)))
            })
            .max_by_key(|(_, d)| *d);
        let slow_bus = bus("sterling_embedded_bus_slow_operations_total");
        let slow_stores = store("sterling_embedded_store_slow_commits_total");
        let mut slow: Vec<(String, f64)> = slow_bus
            .into_iter()
            .map(|(op, n)| (format!("bus {op}"), n))
            .chain(
                slow_stores
                    .into_iter()
                    .map(|(s, n)| (format!("store {s}"), n)),
            )
            .filter(|(_, n)| *n > 0.0)
            .collect();
        slow.sort_by(|a, b| b.1.total_cmp(&a.1));
        Contention {
            slowest_calls: after.slowest(
                "sterling_server_request_duration_seconds",
                &["service", "method"],
                3,
            ),
            bus_busy: bus_busy_by_op.iter().map(|(_, s)| s).sum(),
            bus_busy_by_op,
            bus_mean_wait: Duration::from_secs_f64(waited / operations.max(1.0) / 1e6),
            writers_busy,
            writer_longest_mean_queue,
            slow,
            lock_waits,
        }
    }
}

impl std::fmt::Display for Contention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let pct = |list: &[(String, f64)]| {
            let shown: Vec<String> = list
                .iter()
                .map(|(name, share)| format!("{name} {:.0}%", share * 100.0))
                .collect();
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown.join(", ")
            }
        };
        let longest = |w: &Option<(String, Duration)>| {
            w.as_ref()
                .map_or("none".to_string(), |(n, d)| format!("{n} {:.2} ms", ms(d)))
        };
        let slowest: Vec<String> = self
            .slowest_calls
            .iter()
            .map(|(call, d)| format!("{call} {:.2} ms", ms(d)))
            .collect();
        writeln!(
            f,
            "  slowest calls handled (last minute): {}",
            if slowest.is_empty() {
                "none".to_string()
            } else {
                slowest.join(", ")
            }
        )?;
        writeln!(
            f,
            "  bus connection busy {:.0}% ({}), mean wait {:.3} ms",
            self.bus_busy * 100.0,
            pct(&self.bus_busy_by_op),
            ms(&self.bus_mean_wait)
        )?;
        writeln!(
            f,
            "  store writers busiest: {}; longest mean queue {}; SQLite lock waits {}",
            pct(&self.writers_busy),
            longest(&self.writer_longest_mean_queue),
            self.lock_waits
        )?;
        let slow: Vec<String> = self
            .slow
            .iter()
            .map(|(what, n)| format!("{what} {n:.0}"))
            .collect();
        write!(
            f,
            "  held a file over {} ms: {}",
            sterling_storage::embedded::SLOW.as_millis(),
            if slow.is_empty() {
                "none".to_string()
            } else {
                slow.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "\
# TYPE sterling_embedded_bus_held_microseconds_total counter
sterling_embedded_bus_held_microseconds_total{op=\"publish\"} 1500000
sterling_embedded_bus_held_microseconds_total{op=\"take\"} 500000
sterling_consumer_backlog_events{service=\"feed\",consumer=\"feed-items\"} 3
sterling_embedded_bus_slow_operations_total{op=\"publish\"} 1
sterling_embedded_bus_slow_operations_total{op=\"take\"} 0
sterling_embedded_store_slow_commits_total{store=\"ledger\"} 2
sterling_server_request_duration_seconds{service=\"ledger\",method=\"/ledger.v1.Ledger/Hold\",quantile=\"1\"} 0.12
sterling_server_request_duration_seconds{service=\"ledger\",method=\"/ledger.v1.Ledger/Hold\",quantile=\"0.5\"} 0.002
";

    #[test]
    fn series_are_read_by_name_and_label() {
        let reading = Reading {
            rendered: RENDERED.to_string(),
        };
        assert_eq!(reading.backlogs(), vec![("feed/feed-items".to_string(), 3)]);
        let before = Reading {
            rendered: String::new(),
        };
        let contention = Contention::between(&before, &reading, Duration::from_secs(10), 7);
        assert!((contention.bus_busy - 0.2).abs() < 1e-9, "{contention:?}");
        assert_eq!(contention.bus_busy_by_op[0].0, "publish");
        assert_eq!(
            contention.slowest_calls,
            vec![(
                "ledger /ledger.v1.Ledger/Hold".to_string(),
                Duration::from_millis(120)
            )]
        );
        assert_eq!(contention.lock_waits, 7);
        let slow = vec![
            ("store ledger".to_string(), 2.0),
            ("bus publish".to_string(), 1.0),
        ];
        assert_eq!(contention.slow, slow);
        assert!(
            contention
                .to_string()
                .contains("held a file over 20 ms: store ledger 2, bus publish 1"),
            "{contention}"
        );
    }
}
