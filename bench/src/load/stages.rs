//! Ramp stages, k6 style: `30s:100,60s:1000,30s:0` ramps the number of
//! virtual users linearly from the previous target (0 at the start) to each
//! stage's target over the stage's duration. Virtual user `i` is active
//! while the target is above `i`; this module turns the stages into each
//! user's active windows. Pure: no clock, no I/O.

use std::time::Duration;

/// One stage: reach `target` users at the end of `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    pub target: u32,
}

/// Parses `30s:100,1m:1000,500ms:0` (units `ms`, `s`, `m`).
pub fn parse(spec: &str) -> Result<Vec<Stage>, String> {
    let mut stages = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (d, t) = part
            .split_once(':')
            .ok_or_else(|| format!("stage {part:?}: expected DURATION:TARGET"))?;
        let target = t
            .trim()
            .parse()
            .map_err(|_| format!("stage {part:?}: target {t:?} is not a number"))?;
        stages.push(Stage {
            duration: parse_duration(d.trim()).ok_or_else(|| {
                format!("stage {part:?}: bad duration {d:?} (use 500ms, 30s, 2m)")
            })?,
            target,
        });
    }
    if stages.is_empty() {
        return Err("no stages".into());
    }
    Ok(stages)
}

/// `500ms`, `30s`, `1.5s`, `2m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        return None;
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v * scale))
}

/// The whole run's length.
pub fn total(stages: &[Stage]) -> Duration {
    stages.iter().map(|s| s.duration).sum()
}

/// The number of active users `at` into the run (fractional while
/// ramping).
pub fn target_at(stages: &[Stage], at: Duration) -> f64 {
    let mut from = 0.0;
    let mut start = Duration::ZERO;
    for s in stages {
        let end = start + s.duration;
        if at < end {
            let f = if s.duration.is_zero() {
                1.0
            } else {
                (at - start).as_secs_f64() / s.duration.as_secs_f64()
            };
            return from + (s.target as f64 - from) * f;
        }
        from = s.target as f64;
        start = end;
    }
    from
}

/// The most users any stage reaches.
pub fn peak(stages: &[Stage]) -> u32 {
    stages.iter().map(|s| s.target).max().unwrap_or(0)
}

/// The windows `[start, stop)` in which user `i` is active, to a
/// resolution of `step`. A user still active at the end stops at the end.
pub fn windows(stages: &[Stage], i: u32, step: Duration) -> Vec<(Duration, Duration)> {
    let end = total(stages);
    let mut out = Vec::new();
    let mut open: Option<Duration> = None;
    let mut t = Duration::ZERO;
    loop {
        let active = target_at(stages, t) > i as f64;
        match (active, open) {
            (true, None) => open = Some(t),
            (false, Some(s)) => {
                out.push((s, t));
                open = None;
            }
            _ => {}
        }
        if t >= end {
            break;
        }
        t = (t + step).min(end);
    }
    if let Some(s) = open {
        out.push((s, end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64, target: u32) -> Stage {
        Stage {
            duration: Duration::from_secs(secs),
            target,
        }
    }

    #[test]
    fn stages_parse_with_units_and_refuse_garbage() {
        assert_eq!(
            parse("30s:100, 1m:1000,500ms:0").unwrap(),
            [
                s(30, 100),
                s(60, 1000),
                Stage {
                    duration: Duration::from_millis(500),
                    target: 0
                }
            ]
        );
        for bad in ["", "30:100", "30s", "xs:1", "30s:-1", "30h:1"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn users_ramp_up_hold_and_ramp_down() {
        let stages = [s(10, 100), s(10, 100), s(10, 0)];
        assert_eq!(total(&stages), Duration::from_secs(30));
        assert!((target_at(&stages, Duration::from_secs(5)) - 50.0).abs() < 1e-9);
        assert_eq!(target_at(&stages, Duration::from_secs(15)), 100.0);
        assert!((target_at(&stages, Duration::from_secs(25)) - 50.0).abs() < 1e-9);
        let step = Duration::from_millis(10);
        // User 0 starts at once and leaves last; user 50 is active from
        // 5 s to 25 s; user 100 never.
        let w0 = windows(&stages, 0, step);
        assert_eq!(w0.len(), 1);
        assert!(w0[0].0 <= step && w0[0].1 >= Duration::from_millis(29_900));
        let w50 = windows(&stages, 50, step);
        assert_eq!(w50.len(), 1);
        let (a, b) = w50[0];
        assert!(a.abs_diff(Duration::from_secs(5)) <= step, "{a:?}");
        assert!(b.abs_diff(Duration::from_secs(25)) <= step, "{b:?}");
        assert!(windows(&stages, 100, step).is_empty());
        assert_eq!(peak(&stages), 100);
    }

    #[test]
    fn a_second_ramp_gives_a_second_window_and_the_end_closes_one() {
        let stages = [s(1, 10), s(1, 0), s(1, 10)];
        let w = windows(&stages, 5, Duration::from_millis(10));
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(
            w[1].1,
            Duration::from_secs(3),
            "open at the end: closed there"
        );
    }
}
