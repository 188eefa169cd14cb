//! Prometheus text as `GET /metrics` serves it, read strictly: every sample's family has
//! `# HELP` and `# TYPE` first, names and labels are well formed.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// `name{a="x",b="y"} value` (the optional timestamp after the value is ignored).
pub fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
    let name = line[..name_end].to_string();
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "bad metric name in {line:?}"
    );
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        loop {
            // label name
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "label value not quoted in {line:?}"
            );
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => break,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            assert!(closed, "unterminated label value in {line:?}");
            assert!(
                labels.insert(key.trim().to_string(), value).is_none(),
                "repeated label in {line:?}"
            );
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label set in {line:?}"));
        rest = &inner[end + 1..];
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("value is not a number in {line:?}")),
    };
    Sample {
        name,
        labels,
        value,
    }
}

pub struct Exposition {
    /// family → type
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses the text format, asserting that every sample's family has `# HELP` and
    /// `# TYPE` lines before the sample, once each.
    pub fn parse(text: &str) -> Exposition {
        let mut helps: HashSet<String> = HashSet::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split_whitespace().next().unwrap_or("").to_string();
                assert!(rest.len() > name.len() + 1, "HELP without text: {line:?}");
                assert!(helps.insert(name), "HELP twice: {line:?}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let name = words.next().unwrap_or("").to_string();
                let kind = words.next().unwrap_or("").to_string();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"]
                        .contains(&kind.as_str()),
                    "bad TYPE line: {line:?}"
                );
                assert!(types.insert(name, kind).is_none(), "TYPE twice: {line:?}");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line);
            let family = family_of(&sample.name, &types);
            assert!(
                helps.contains(&family),
                "no # HELP for {family} before {line:?}"
            );
            assert!(
                types.contains_key(&family),
                "no # TYPE for {family} before {line:?}"
            );
            samples.push(sample);
        }
        Exposition { types, samples }
    }

    pub fn with_name<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The one family whose name contains `part`, with its samples.
    #[track_caller]
    pub fn family_containing(&self, part: &str) -> (&str, Vec<&Sample>) {
        let names: Vec<&String> = self.types.keys().filter(|n| n.contains(part)).collect();
        assert_eq!(
            names.len(),
            1,
            "expected one metric family named like {part:?}, found {names:?}"
        );
        let name = names[0].as_str();
        let samples: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| family_of(&s.name, &self.types) == name)
            .collect();
        assert!(!samples.is_empty(), "{name} has no sample");
        (name, samples)
    }
}

/// The family a sample belongs to: its own name, or the histogram/summary it is part of.
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    if types.contains_key(name) {
        return name.to_string();
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// The value of an unlabelled sample named `name`, read leniently (no HELP or TYPE needed).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}
