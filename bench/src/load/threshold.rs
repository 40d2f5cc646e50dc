//! Pass/fail thresholds, k6 style: `deliver_p95_ms<100`, `lost==0`,
//! `connect_error_rate<0.01`. Each names a figure of the report, a
//! comparison and a number; the run's exit code says whether all held.
//! Pure: parsing and evaluation only.

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

/// One threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub metric: String,
    pub op: Op,
    pub value: f64,
}

/// The figures a threshold may name.
pub const METRICS: [&str; 13] = [
    "ack_p50_ms",
    "ack_p95_ms",
    "ack_p99_ms",
    "deliver_p50_ms",
    "deliver_p95_ms",
    "deliver_p99_ms",
    "deliver_p999_ms",
    "lost",
    "duplicated",
    "reordered",
    "connect_errors",
    "connect_error_rate",
    "delivered_per_sec",
];

impl Threshold {
    /// Parses `NAME OP NUMBER` (spaces optional).
    pub fn parse(spec: &str) -> Result<Threshold, String> {
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (at, sym, op) = ops
            .iter()
            .filter_map(|&(sym, op)| spec.find(sym).map(|at| (at, sym, op)))
            .min_by_key(|&(at, sym, _)| (at, std::cmp::Reverse(sym.len())))
            .ok_or_else(|| format!("threshold {spec:?}: expected NAME<N, <=, >, >= or =="))?;
        let metric = spec[..at].trim().to_string();
        if !METRICS.contains(&metric.as_str()) {
            return Err(format!(
                "threshold {spec:?}: unknown figure {metric:?} (one of {})",
                METRICS.join(", ")
            ));
        }
        let value: f64 = spec[at + sym.len()..]
            .trim()
            .parse()
            .map_err(|_| format!("threshold {spec:?}: not a number after {sym}"))?;
        Ok(Threshold { metric, op, value })
    }

    /// Whether `actual` passes.
    pub fn holds(&self, actual: f64) -> bool {
        match self.op {
            Op::Lt => actual < self.value,
            Op::Le => actual <= self.value,
            Op::Gt => actual > self.value,
            Op::Ge => actual >= self.value,
            Op::Eq => actual == self.value,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
        };
        write!(f, "{}{}{}", self.metric, op, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_decide() {
        let t = Threshold::parse("deliver_p95_ms<100").unwrap();
        assert_eq!(
            (t.metric.as_str(), t.op, t.value),
            ("deliver_p95_ms", Op::Lt, 100.0)
        );
        assert!(t.holds(99.9) && !t.holds(100.0));
        let t = Threshold::parse("lost == 0").unwrap();
        assert_eq!(t.op, Op::Eq);
        assert!(t.holds(0.0) && !t.holds(1.0));
        let t = Threshold::parse("connect_error_rate<=0.01").unwrap();
        assert_eq!(t.op, Op::Le, "<= is not read as <");
        assert!(t.holds(0.01));
        let t = Threshold::parse("delivered_per_sec>=1e5").unwrap();
        assert!(t.holds(1e5) && !t.holds(99_999.0));
        assert_eq!(t.to_string(), "delivered_per_sec>=100000");
        for bad in ["lost", "lost<", "lost<x", "latency<5", "<5", "lost=0"] {
            assert!(Threshold::parse(bad).is_err(), "{bad:?}");
        }
    }
}
