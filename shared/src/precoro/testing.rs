//! For tests of Precoro readers, in this crate and others: the recorded shapes under
//! `tests/fixtures/precoro/`, and blanking any object or array of a JSON reply the ways PHP and
//! the live API write "nothing" (specs/precoro-shapes.md §1.4): `[]`, `{}`, null, or absent.

use serde_json::{Value, json};

/// The text of `tests/fixtures/precoro/{name}` (its README says what each one shows).
pub fn fixture(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/precoro/");
    std::fs::read_to_string(format!("{path}{name}"))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blank {
    EmptyList,
    EmptyMap,
    Null,
    Missing,
}

impl Blank {
    pub const ALL: [Blank; 4] = [
        Blank::EmptyList,
        Blank::EmptyMap,
        Blank::Null,
        Blank::Missing,
    ];
}

/// Every object or array in `v`, as JSON pointers (the root excluded).
pub fn containers(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: &str, out: &mut Vec<String>) {
        let children: Vec<(String, &Value)> = match v {
            Value::Object(m) => m.iter().map(|(k, c)| (format!("{at}/{k}"), c)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{at}/{i}"), c))
                .collect(),
            _ => return,
        };
        for (p, c) in children {
            if c.is_object() || c.is_array() {
                out.push(p.clone());
            }
            walk(c, &p, out);
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// Blank every `(pointer, how)` of `picks` in `v`: later siblings and deeper values first, so
/// that no removal shifts another's index. A pointer already blanked away is skipped.
pub fn blank_all(v: &mut Value, picks: &[(String, Blank)]) {
    let mut picks = picks.to_vec();
    picks.sort_by_key(|(p, _)| std::cmp::Reverse(segments(p)));
    for (pointer, how) in &picks {
        blank_out(v, pointer, *how);
    }
}

/// A pointer's segments, numbers compared as numbers.
fn segments(pointer: &str) -> Vec<(u64, String)> {
    pointer
        .split('/')
        .map(|s| (s.parse().unwrap_or(u64::MAX), s.to_string()))
        .collect()
}

fn blank_out(v: &mut Value, pointer: &str, how: Blank) {
    let Some((parent, key)) = pointer.rsplit_once('/') else {
        return;
    };
    let replacement = match how {
        Blank::EmptyList => json!([]),
        Blank::EmptyMap => json!({}),
        Blank::Null => Value::Null,
        Blank::Missing => Value::Null,
    };
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) if how == Blank::Missing => {
            m.remove(key);
        }
        Some(Value::Object(m)) => {
            if let Some(slot) = m.get_mut(key) {
                *slot = replacement;
            }
        }
        Some(Value::Array(a)) => {
            if let Some(i) = key.parse::<usize>().ok().filter(|i| *i < a.len()) {
                if how == Blank::Missing {
                    a.remove(i);
                } else {
                    a[i] = replacement;
                }
            }
        }
        _ => {}
    }
}
