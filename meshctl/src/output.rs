//! How meshctl prints: objects as YAML or JSON, reports as text or JSON,
//! and plain aligned tables.

use clap::ValueEnum;
use serde_json::{Value, json};

/// Output of commands that print Kubernetes objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Multi-document YAML, `kubectl apply -f -` ready.
    Yaml,
    /// A `v1 List` of the objects.
    Json,
}

impl Format {
    pub fn objects(self, objects: &[Value]) -> anyhow::Result<String> {
        Ok(match self {
            Format::Yaml => {
                let mut out = String::new();
                for o in objects {
                    out.push_str("---\n");
                    out.push_str(&serde_saphyr::to_string(o)?);
                }
                out
            }
            Format::Json => {
                let list = json!({ "apiVersion": "v1", "kind": "List", "items": objects });
                serde_json::to_string_pretty(&list)? + "\n"
            }
        })
    }
}

/// Output of commands that report state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Report {
    /// For people.
    Text,
    /// For machines.
    Json,
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["CLUSTER", "ALIVE"],
            &[
                vec!["west".into(), "true".into()],
                vec!["central".into(), "false".into()],
            ],
        );
        assert_eq!(t, "CLUSTER  ALIVE\nwest     true\ncentral  false\n");
    }
}
