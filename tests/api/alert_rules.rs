//! Every metric the alert rules (`ops/prometheus/alerts.yml`) read is on `/metrics` of a server
//! that has just started, before any traffic. A rule reading a metric that is not there
//! (misspelt, renamed, or not registered at zero by `metrics_catalogue::register_at_zero`)
//! never fires, and nothing else would say so.
//!
//! The recorder is process-wide: run alone (nextest runs each test in its own process) the
//! page is exactly what start-up registered; in a shared process it may hold more, never less.

use std::collections::{BTreeMap, BTreeSet};

use crate::helpers::{Backend, TestApp};

crate::tests!(
    plain: [every_metric_an_alert_reads_is_exposed_at_start_up],
    sync: [
        metric_names_are_read_out_of_promql,
        expressions_are_read_out_of_a_rule_file,
        suffixes_of_histograms_and_summaries_map_to_their_family,
    ],
);

const RULES: &str = include_str!("../../ops/prometheus/alerts.yml");

async fn every_metric_an_alert_reads_is_exposed_at_start_up() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let text = reqwest::get(app.metrics_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let exposed = Exposition::parse(&text);
    let rules = rule_exprs(RULES);
    let alerts = RULES
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(rules.len(), alerts, "an expr per alert: {rules:#?}");
    assert!(alerts >= 10, "{alerts} alerts");
    let mut missing = Vec::new();
    for (alert, expr) in &rules {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{alert}: no metric in {expr:?}");
        for name in names {
            if let Err(why) = exposed.check(&name) {
                missing.push(format!("{alert}: {why}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "alert rules read metrics a freshly started server does not expose:\n{}\n\n/metrics:\n{text}",
        missing.join("\n")
    );
    app.stop().await;
}

/// `(rule name, expr)` of every rule of a Prometheus rule file (`alert` or `record` names it).
/// Reads only what rule files use, so no YAML crate is needed: `key: value` lines (also as a
/// list item, `- key: value`), quoted values, and block scalars (`|`, `>`, with `-` or `+`),
/// whose lines are kept as they are (folding does not matter to PromQL).
fn rule_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut rules = Vec::new();
    let mut name = String::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((indent, key, value)) = key_value(lines[i]) else {
            i += 1;
            continue;
        };
        i += 1;
        // A block scalar's lines, and a plain expr's further ones: blank or indented deeper than
        // its key. (Any other key's deeper lines are the keys under it.)
        let block = value.starts_with('|') || value.starts_with('>');
        let mut body = Vec::new();
        while (block || key == "expr")
            && i < lines.len()
            && (lines[i].trim().is_empty() || indentation(lines[i]) > indent)
        {
            body.push(lines[i]);
            i += 1;
        }
        match key {
            "alert" | "record" => name = unquote(value),
            "expr" if block => {
                let margin = body
                    .iter()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| indentation(l))
                    .min()
                    .unwrap_or(0);
                let text = body
                    .iter()
                    .map(|l| l.get(margin..).unwrap_or_default().trim_end())
                    .collect::<Vec<_>>()
                    .join("\n");
                rules.push((name.clone(), text.trim_end().to_string()));
            }
            "expr" => {
                let text = std::iter::once(unquote(value))
                    .chain(body.iter().map(|l| l.trim().to_string()))
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                rules.push((name.clone(), text));
            }
            _ => {}
        }
    }
    rules
}

/// `(column of the key, key, value)` of a `key: value` or `- key: value` line.
fn key_value(line: &str) -> Option<(usize, &str, &str)> {
    let content = line.trim_start();
    let mut indent = line.len() - content.len();
    let content = match content.strip_prefix("- ") {
        Some(item) => {
            let key = item.trim_start();
            indent += 2 + item.len() - key.len();
            key
        }
        None => content,
    };
    let (key, value) = content.split_once(':')?;
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !is_key || !(value.is_empty() || value.starts_with(' ')) {
        return None;
    }
    Some((indent, key, value.trim()))
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        return inner.replace("\\\"", "\"").replace("\\\\", "\\");
    }
    value.to_string()
}

/// Aggregations, operators, modifiers and literals: identifiers of PromQL that are not metrics
/// (compared in lower case: PromQL's keywords ignore case, metric names do not).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Keywords followed by a list of label names in parentheses.
const GROUPINGS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: the identifiers left once strings, label
/// matchers `{...}`, ranges and subqueries `[...]`, groupings (`by (...)`, `on (...)`, ...),
/// numbers and durations, comments, functions (an identifier followed by `(`) and keywords are
/// set aside.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_to(&chars, i, '}');
        } else if c == '[' {
            i = skip_to(&chars, i, ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // 0.95, 1e3, 0x1f, 5m, 1h30m
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '_'))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || matches!(c, '_' | ':') {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if GROUPINGS.contains(&lower.as_str()) {
                if call {
                    i = skip_to(&chars, next, ')');
                }
            } else if !call && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index after the string starting at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
        } else if chars[i] == quote {
            return i + 1;
        } else {
            i += 1;
        }
    }
    chars.len()
}

/// The index after the `close` ending what opens at `start` (strings inside skipped: a label
/// value may hold the closing character, as `endpoint="GET /v1/invoices/{id}"` does).
fn skip_to(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        if matches!(chars[i], '"' | '\'' | '`') {
            i = skip_string(chars, i);
        } else if chars[i] == close {
            return i + 1;
        } else {
            i += 1;
        }
    }
    chars.len()
}

/// What a `/metrics` page has: each family's type (`# TYPE`) and the name of every sample.
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut types = BTreeMap::new();
        let mut samples = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    types.insert(name.to_string(), kind.trim().to_string());
                }
            } else if !line.is_empty() && !line.starts_with('#') {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Self { types, samples }
    }

    /// The family a series name belongs to, with its type: the name itself, or the base name
    /// of a histogram's `_bucket`, `_sum` or `_count`, or of a summary's `_sum` or `_count`.
    fn family<'a>(&self, name: &'a str) -> Option<(&'a str, &str)> {
        if let Some(kind) = self.types.get(name) {
            return Some((name, kind.as_str()));
        }
        for (suffix, kinds) in [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ] {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some(kind) = self.types.get(base)
                && kinds.contains(&kind.as_str())
            {
                return Some((base, kind.as_str()));
            }
        }
        None
    }

    /// Whether a rule reading `name` finds series.
    fn check(&self, name: &str) -> Result<(), String> {
        match self.family(name) {
            Some(_) if self.samples.contains(name) => Ok(()),
            Some((base, kind)) => Err(format!("{base} is a {kind} without {name} series")),
            None => {
                let hint = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .and_then(|base| self.types.get(base).map(|kind| (base, kind)))
                    .map(|(base, kind)| format!(" ({base} is a {kind})"))
                    .unwrap_or_default();
                Err(format!("{name} is not on /metrics{hint}"))
            }
        }
    }
}

fn metric_names_are_read_out_of_promql() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (job, le) (rate(webhook_processing_seconds_bucket{provider="stripe"}[10m]))) > 300"#
        ),
        ["webhook_processing_seconds_bucket"]
    );
    assert_eq!(
        names(
            r#"sum without (instance) (increase(stripe_requests_total{endpoint="GET /v1/invoices/{id}", status=~"429|5xx"}[5m] offset 1h))
              / on (job) group_left (provider) max(up) > bool 0.2"#
        ),
        ["stripe_requests_total", "up"]
    );
    assert_eq!(
        names("a_total AND ON() vector(0) or b unless c_count # d_total in a comment\n"),
        ["a_total", "b", "c_count"]
    );
    assert_eq!(
        names("max_over_time(x[30m:1m]) > 1e3 or absent(y) or time() - z @ 1609746000 > Inf"),
        ["x", "y", "z"]
    );
    assert_eq!(
        names("count(sum by (provider) (job:g:max)) == 0 and .5 < 1h30m"),
        ["job:g:max"]
    );
    let rules = rule_exprs(RULES);
    assert!(
        rules
            .iter()
            .any(|(_, expr)| metric_names(expr).contains("webhook_events_dead_total")),
        "{rules:#?}"
    );
}

fn expressions_are_read_out_of_a_rule_file() {
    let yaml = r#"groups:
  - name: g
    rules:
      - alert: Inline
        expr: up == 0
        for: 5m
        annotations:
          description: >-
            a description with
            expr: not this one
      - alert: Quoted
        expr: 'sum(rate(a_total{x="y"}[5m])) > 0'
      - alert: Block
        expr: |
          max by (job) (b) > 0

          and on (job) c == 0
        for: 1m
        labels:
          severity: page
      - record: job:d:rate5m
        expr: >-
          sum by (job)
            (rate(d_total[5m]))
"#;
    let pair = |name: &str, expr: &str| (name.to_string(), expr.to_string());
    assert_eq!(
        rule_exprs(yaml),
        [
            pair("Inline", "up == 0"),
            pair("Quoted", r#"sum(rate(a_total{x="y"}[5m])) > 0"#),
            pair("Block", "max by (job) (b) > 0\n\nand on (job) c == 0"),
            pair("job:d:rate5m", "sum by (job)\n  (rate(d_total[5m]))"),
        ]
    );
}

fn suffixes_of_histograms_and_summaries_map_to_their_family() {
    let exposed = Exposition::parse(
        "# TYPE a_seconds histogram\n\
         a_seconds_bucket{le=\"+Inf\"} 0\n\
         a_seconds_sum 0\n\
         a_seconds_count 0\n\
         \n\
         # TYPE b_seconds summary\n\
         b_seconds{quantile=\"0.5\"} 0\n\
         b_seconds_sum 0\n\
         b_seconds_count 0\n\
         \n\
         # TYPE c_total counter\n\
         c_total{x=\"y\"} 0\n",
    );
    for name in [
        "a_seconds_bucket",
        "a_seconds_sum",
        "a_seconds_count",
        "b_seconds",
        "b_seconds_sum",
        "b_seconds_count",
        "c_total",
    ] {
        assert_eq!(exposed.check(name), Ok(()), "{name}");
    }
    // A histogram has no series of its own name, a summary no buckets, a counter no _count.
    for name in [
        "a_seconds",
        "b_seconds_bucket",
        "c_total_count",
        "c",
        "d_total",
    ] {
        assert!(exposed.check(name).is_err(), "{name}");
    }
    assert_eq!(
        exposed.family("a_seconds_bucket"),
        Some(("a_seconds", "histogram"))
    );
}
