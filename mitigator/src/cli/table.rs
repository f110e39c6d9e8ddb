//! Aligned plain-text tables for human output.

pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Columns aligned right (numbers).
    right: Vec<bool>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            right: vec![false; headers.len()],
        }
    }

    pub fn right_align(mut self, cols: &[usize]) -> Self {
        for c in cols {
            self.right[*c] = true;
        }
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                    .chain([self.headers[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(self.rows.iter()) {
            let cells: Vec<String> = line
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if self.right[i] {
                        format!("{c:>w$}", w = widths[i])
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["name", "packets"]).right_align(&[1]);
        t.row(vec!["pass".into(), "12".into()]);
        t.row(vec!["drop_blocklist".into(), "3456".into()]);
        assert_eq!(
            t.render(),
            "name            packets\npass                 12\ndrop_blocklist     3456\n"
        );
    }
}
