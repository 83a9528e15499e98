//! `sterling load`, run as a person runs it: every authorisation it offers is answered, and
//! every approval's feed item, push and webhook is seen and timed (none missing, none counted
//! twice); the consumers' backlog comes from the bank's own gauges. Whether a rate is sustained
//! depends on the machine and is not asserted here; docs/benchmarks.md records it.

use std::process::Command;

/// The number after `label` on `line` (`"sent 30,"` gives 30).
fn number_after(line: &str, label: &str) -> u64 {
    let rest = line
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"))
        .1;
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {line:?}"))
}

/// The count in brackets at the end of the percentile line starting with `what`.
fn timed(output: &str, what: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(what))
        .unwrap_or_else(|| panic!("no {what} line in:\n{output}"));
    number_after(line.rsplit_once('(').expect("a count").1, "")
}

#[test]
fn every_approval_is_timed_to_its_feed_item_push_and_webhook() {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sterling"));
    for (name, _) in std::env::vars() {
        if name.starts_with("STERLING_") {
            command.env_remove(name);
        }
    }
    // A test build on a busy machine is slow: a decline on the budget would leave nothing to
    // follow, so the budget is generous (the timings are not what this test checks).
    let output = command
        .env("STERLING_CARD_API_BUDGET_MS", "20000")
        .arg("--data")
        .arg(data.path())
        .args([
            "load",
            "--rates",
            "10,10",
            "--seconds",
            "3",
            "--customers",
            "3",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    // The same rate twice: the second offers new ids (not answered from the first's records)
    // and follows their effects as the first did.
    let steps: Vec<&str> = text.split("rate 10/s").skip(1).collect();
    assert_eq!(steps.len(), 2, "{text}");
    for step in steps {
        let rate = step.lines().next().unwrap();
        assert_eq!(number_after(rate, "sent "), 30, "{text}");
        assert_eq!(number_after(rate, "approved "), 30, "{text}");
        assert_eq!(number_after(rate, "failed "), 0, "{text}");
        assert_eq!(timed(step, "authorisation"), 30, "{text}");
        for effect in ["feed item", "push", "webhook", "all three"] {
            assert_eq!(timed(step, effect), 30, "{effect}: {text}");
        }
        // The process's CPU per authorisation is read from /proc: some was used.
        let cpu = step
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("CPU "))
            .unwrap_or_else(|| panic!("no CPU line in:\n{text}"));
        let words: Vec<&str> = cpu.split_whitespace().collect();
        let per_authorisation: f64 = words[0].parse().unwrap();
        assert!(per_authorisation > 0.0, "{text}");
        // And its context switches (getrusage): every authorisation crosses threads.
        assert_eq!(words[2], "and", "{text}");
        let switches: f64 = words[3].parse().unwrap();
        assert!(switches >= 1.0, "{text}");
    }
    assert!(text.contains("every effect done"), "{text}");
    // The backlog is read from the consumers' gauges: a consumer is named.
    assert!(!text.contains("furthest behind: none"), "{text}");
    // Its bank ran under --data and was removed after.
    let left: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("bench-load-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
