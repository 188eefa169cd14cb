//! One table on stdout, and the same as JSON.

use crate::cpu::Usage;
use crate::scenarios::Outcome;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub struct Line {
    pub name: String,
    pub rate: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub errors: BTreeMap<String, u64>,
    pub requests: u64,
    pub peak_rss_kib: Option<u64>,
    /// CPU per request over the measured seconds, by process (the service's scenarios).
    pub cpu: Option<Usage>,
    /// The ceiling's name and rate.
    pub ceiling: Option<(String, f64)>,
    /// Requests to the product service per order created, warm-up included (scenarios
    /// that create).
    pub lookups_per_create: Option<f64>,
}

impl Line {
    pub fn new(name: &str, out: &Outcome) -> Line {
        Line {
            name: name.to_string(),
            rate: out.rate(),
            p50: out.ms(0.50),
            p95: out.ms(0.95),
            p99: out.ms(0.99),
            max: out.ms(1.0),
            errors: out.errors.clone(),
            requests: out.ok,
            peak_rss_kib: None,
            cpu: None,
            ceiling: None,
            lookups_per_create: None,
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        self.ceiling
            .as_ref()
            .filter(|(_, c)| *c > 0.0)
            .map(|(_, c)| self.rate / c)
    }
}

pub struct Target {
    pub what: String,
    pub figure: String,
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub setup: Vec<(String, Value)>,
    pub sections: Vec<(String, Vec<Line>)>,
    pub facts: Vec<(String, String, Value)>,
    pub notes: Vec<String>,
    pub targets: Vec<Target>,
    /// Notes of what went wrong without failing a request (errors in a service's log,
    /// events still pending after the wait for them): each fails a smoke run.
    pub troubles: usize,
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

impl Report {
    /// The section of that title, made at the end if there is none yet.
    pub fn section(&mut self, title: &str) -> &mut Vec<Line> {
        let at = match self.sections.iter().position(|(t, _)| t == title) {
            Some(at) => at,
            None => {
                self.sections.push((title.to_string(), Vec::new()));
                self.sections.len() - 1
            }
        };
        &mut self.sections[at].1
    }

    pub fn line(&self, name: &str) -> Option<&Line> {
        self.sections
            .iter()
            .flat_map(|(_, l)| l)
            .find(|l| l.name == name)
    }

    pub fn fact(&mut self, key: &str, text: String, value: Value) {
        println!("  {key}: {text}");
        self.facts.push((key.to_string(), text, value));
    }

    pub fn note(&mut self, text: String) {
        println!("  note: {text}");
        self.notes.push(text);
    }

    pub fn print(&self) {
        println!();
        println!(
            "{:<44} {:>9} {:>7} {:>7} {:>7} {:>8} {:>9} {:>8}  {:<30} {:>6}",
            "scenario",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "errors",
            "peak RSS",
            "ceiling",
            "ratio"
        );
        for (title, lines) in &self.sections {
            println!("-- {title}");
            for l in lines {
                let errors = if l.errors.is_empty() {
                    "0".to_string()
                } else {
                    l.errors
                        .iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let rss = l
                    .peak_rss_kib
                    .map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                    .unwrap_or_else(|| "-".into());
                let (ceiling, ratio) = match (&l.ceiling, l.ratio()) {
                    (Some((name, _)), Some(r)) => (name.clone(), format!("{r:.2}x")),
                    _ => ("-".into(), "-".into()),
                };
                println!(
                    "{:<44} {:>9.0} {:>7} {:>7} {:>7} {:>8} {:>9} {:>8}  {:<30} {:>6}",
                    l.name,
                    l.rate,
                    ms(l.p50),
                    ms(l.p95),
                    ms(l.p99),
                    ms(l.max),
                    errors,
                    rss,
                    ceiling,
                    ratio
                );
            }
        }
        if !self.facts.is_empty() {
            println!();
            for (k, text, _) in &self.facts {
                println!("{k}: {text}");
            }
        }
        if !self.targets.is_empty() {
            println!();
            println!("{:<58} {:<34} met", "target", "figure");
            for t in &self.targets {
                let met = match t.met {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "n/a",
                };
                println!("{:<58} {:<34} {met}", t.what, t.figure);
            }
        }
        for n in &self.notes {
            println!("note: {n}");
        }
    }

    pub fn json(&self) -> Value {
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|(title, lines)| {
                json!({
                    "section": title,
                    "rows": lines.iter().map(|l| json!({
                        "scenario": l.name,
                        "requests": l.requests,
                        "req_per_s": num(l.rate),
                        "p50_ms": num(l.p50),
                        "p95_ms": num(l.p95),
                        "p99_ms": num(l.p99),
                        "max_ms": num(l.max),
                        "errors": l.errors,
                        "peak_rss_kib": l.peak_rss_kib,
                        "cpu_us_per_request": l.cpu.as_ref().map(Usage::json),
                        "ceiling": l.ceiling.as_ref().map(|(n, _)| n),
                        "ceiling_per_s": l.ceiling.as_ref().map(|(_, c)| num(*c)),
                        "ratio": l.ratio().map(num),
                        "product_lookups_per_create": l.lookups_per_create.map(num),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "setup": self.setup.iter().cloned().collect::<serde_json::Map<_, _>>(),
            "sections": sections,
            "facts": self.facts.iter().map(|(k, _, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
            "targets": self.targets.iter().map(|t| json!({"target": t.what, "figure": t.figure, "met": t.met})).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}
