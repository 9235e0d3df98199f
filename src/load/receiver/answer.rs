//! How a simulated receiver answers: a latency drawn from a range and a status drawn from a
//! mix (or a plain error rate), so load runs and local tests meet receivers that are slow,
//! fail, or push back with 429 as real ones do. The parsers take the CLI's spelling and name
//! the option in their errors, since `switchyard load` and `switchyard receiver` share them.

use std::time::Duration;

use super::Reply;

/// Why an answer option was refused; the message names the option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("--latency-ms: expected N or MIN-MAX milliseconds (MIN <= MAX), got `{0}`")]
    Latency(String),
    #[error("--error-rate: expected a fraction in [0, 1), got `{0}`")]
    ErrorRate(String),
    #[error("--status-mix: {0}")]
    StatusMix(String),
}

/// Parses `N` or `MIN-MAX` (milliseconds).
pub fn parse_latency(s: &str) -> Result<(u64, u64), AnswerError> {
    let bad = || AnswerError::Latency(s.to_string());
    let num = |v: &str| v.trim().parse::<u64>().map_err(|_| bad());
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Parses an error rate, a fraction in `[0, 1)`.
pub fn parse_error_rate(s: &str) -> Result<f64, AnswerError> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..1.0).contains(r))
        .ok_or_else(|| AnswerError::ErrorRate(s.to_string()))
}

/// Statuses with weights, e.g. `200=90,500=8,429=2`: each answer draws one in proportion.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMix(Vec<(u16, u32)>);

impl StatusMix {
    pub fn parse(s: &str) -> Result<StatusMix, AnswerError> {
        let bad = |why: String| AnswerError::StatusMix(why);
        let mut mix = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (status, weight) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("expected STATUS=WEIGHT, got `{part}`")))?;
            let status: u16 = status
                .trim()
                .parse()
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| bad(format!("`{status}` is not an HTTP status 200-599")))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{weight}` is not a whole-number weight")))?;
            if mix.iter().any(|(s, _)| *s == status) {
                return Err(bad(format!("status {status} is given twice")));
            }
            mix.push((status, weight));
        }
        if mix.iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
            return Err(bad(format!(
                "expected e.g. 200=90,500=8,429=2 with weights above 0, got `{s}`"
            )));
        }
        Ok(StatusMix(mix))
    }

    /// 500 with probability `rate`, 200 otherwise.
    pub fn error_rate(rate: f64) -> StatusMix {
        let fail = (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
        StatusMix(vec![(200, 1_000_000 - fail), (500, fail)])
    }

    /// The status that the point `x` in `[0, 1)` of the weights falls on.
    fn pick(&self, x: f64) -> u16 {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut point = (x * total as f64) as u64;
        for (status, weight) in &self.0 {
            if point < u64::from(*weight) {
                return *status;
            }
            point -= u64::from(*weight);
        }
        self.0
            .iter()
            .rev()
            .find(|(_, w)| *w > 0)
            .map_or(200, |s| s.0)
    }
}

/// A simulated receiver's answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub latency_ms: (u64, u64),
    pub statuses: StatusMix,
}

impl Behaviour {
    /// One answer: a status from the mix, held for a latency from the range.
    pub fn reply(&self) -> Reply {
        let (lo, hi) = self.latency_ms;
        let delay = if hi > lo {
            rand::random_range(lo..=hi)
        } else {
            lo
        };
        Reply {
            delay: Duration::from_millis(delay),
            ..Reply::status(self.statuses.pick(rand::random::<f64>()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_takes_one_value_or_an_ordered_range_and_names_the_option() {
        assert_eq!(parse_latency("5"), Ok((5, 5)));
        assert_eq!(parse_latency(" 10 - 50 "), Ok((10, 50)));
        for bad in ["", "x", "50-10", "-3", "1-2-3", "1.5"] {
            let e = parse_latency(bad).unwrap_err().to_string();
            assert!(e.starts_with("--latency-ms"), "{bad}: {e}");
        }
        assert_eq!(parse_error_rate("0.25"), Ok(0.25));
        assert!(parse_error_rate("1").is_err() && parse_error_rate("-0.1").is_err());
    }

    #[test]
    fn a_status_mix_draws_in_proportion_and_refuses_what_it_cannot_mean() {
        let mix = StatusMix::parse("200=90,500=8,429=2").unwrap();
        assert_eq!(mix.pick(0.0), 200);
        assert_eq!(mix.pick(0.899), 200);
        assert_eq!(mix.pick(0.90), 500);
        assert_eq!(mix.pick(0.979), 500);
        assert_eq!(mix.pick(0.98), 429);
        assert_eq!(mix.pick(0.999_999), 429);
        assert_eq!(StatusMix::parse("204=1").unwrap().pick(0.5), 204);
        for (bad, says) in [
            ("200", "STATUS=WEIGHT"),
            ("abc=1", "not an HTTP status"),
            ("99=1", "not an HTTP status"),
            ("200=x", "weight"),
            ("200=0", "above 0"),
            ("", "above 0"),
            ("200=1,200=2", "twice"),
        ] {
            let e = StatusMix::parse(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("--status-mix") && e.contains(says),
                "{bad}: {e}"
            );
        }
        let half = StatusMix::error_rate(0.5);
        assert_eq!((half.pick(0.49), half.pick(0.5)), (200, 500));
        assert_eq!(StatusMix::error_rate(0.0).pick(0.999_999), 200);
    }
}
