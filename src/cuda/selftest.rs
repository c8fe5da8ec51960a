//! `gdn selftest --device cuda`: every CUDA op and kernel against the CPU reference on fresh
//! random inputs, one table row per (op, shape).

/// One comparison of a CUDA op with its CPU reference.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub op: String,
    pub shape: String,
    /// max |gpu − cpu| / max |cpu| over the compared outputs (∞ on NaN).
    pub max_rel_err: f64,
    pub tolerance: f64,
}

impl Row {
    pub fn pass(&self) -> bool {
        self.max_rel_err.is_finite() && self.max_rel_err <= self.tolerance
    }
}

/// The table as printed: op | shape | max rel. err. | tolerance | pass.
pub fn format_table(rows: &[Row]) -> String {
    let w_op = rows.iter().map(|r| r.op.len()).max().unwrap_or(2).max(2);
    let w_sh = rows.iter().map(|r| r.shape.len()).max().unwrap_or(5).max(5);
    let mut s = format!(
        "| {:w_op$} | {:w_sh$} | max rel. err. | tolerance | pass |\n",
        "op", "shape"
    );
    s += &format!(
        "|{}|{}|---------------|-----------|------|\n",
        "-".repeat(w_op + 2),
        "-".repeat(w_sh + 2)
    );
    for r in rows {
        s += &format!(
            "| {:w_op$} | {:w_sh$} | {:>13.3e} | {:>9.1e} | {:4} |\n",
            r.op,
            r.shape,
            r.max_rel_err,
            r.tolerance,
            if r.pass() { "yes" } else { "NO" }
        );
    }
    s
}
