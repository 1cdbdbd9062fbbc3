//! Medians and ranges over benchmark rounds: the one median of the workspace (`cport soak`
//! and `cport bench` take theirs from here).

/// Median of the values (mean of the two middle ones for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (min, max) of the values; (0, 0) when empty.
pub fn range(values: &[f64]) -> (f64, f64) {
    values.iter().fold(
        if values.is_empty() {
            (0.0, 0.0)
        } else {
            (f64::MAX, f64::MIN)
        },
        |(lo, hi), &x| (lo.min(x), hi.max(x)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(range(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }
}
