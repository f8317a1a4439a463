//! The report's statistics: Wilson intervals, Fisher's exact test, Cohen's h, a power
//! calculation and quartiles.
//!
//! Every function reproduces a named reference implementation (scipy, statsmodels, numpy) so that
//! our numbers can be compared with the published AtomicGuard results, which were computed in
//! Python. The tests pin the reference outputs, each next to the Python call that produced it
//! (scipy 1.17.1, statsmodels 0.15.0, numpy 2.4.6).
//!
//! Conventions: proportions are in `[0, 1]`; p-values are two-sided; effect sizes are signed
//! "from the first argument to the second" (positive = improvement when the second is the
//! treatment).
//!
//! Depends on nothing else of pipe (statrs for distributions).

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};
use statrs::function::factorial::ln_binomial;

/// Relative tolerance when deciding whether another table is "as extreme as" the observed one in
/// [`fisher_exact_two_sided`]: a table counts when `p_table <= p_observed * (1 + FISHER_REL_TOL)`.
///
/// Tables with exactly tied probabilities (e.g. mirror images in a symmetric design) must count,
/// but floating point computes them a few ulps apart. R's `fisher.test` uses `1 + 1e-7`; scipy
/// 1.17 uses `1 + 1e-14` (`gamma` in `scipy.stats.fisher_exact`). We use R's `1e-7` because our
/// log-space probabilities are only accurate to ~1e-12 relative at n ≈ 2000, so 1e-14 could miss
/// real ties — and does: with 1e-14 here, `[[2, 17], [2, 27]]` gives 0.643 instead of scipy's
/// 1.0 (see the tests). The two tolerances give different answers only if two *distinct* tables'
/// probabilities lie within 1e-7 relative of each other; this never happened when checking
/// against scipy all 249,016 2×2 tables with both rows ≤ 30 plus 3,000 random tables with rows
/// up to 1,500 (worst relative difference 6e-12).
pub const FISHER_REL_TOL: f64 = 1e-7;

/// z such that P(Z ≤ z) = `q` for a standard normal Z (statrs' inverse CDF).
fn normal_quantile(q: f64) -> f64 {
    Normal::standard().inverse_cdf(q)
}

/// P(Z ≤ x) for a standard normal Z.
fn normal_cdf(x: f64) -> f64 {
    Normal::standard().cdf(x)
}

/// Wilson score interval for `successes` of `n` at `confidence` (e.g. 0.95), as
/// `(lower, upper)`.
///
/// Why Wilson: unlike the normal ("Wald") interval it stays inside `[0, 1]` and is not degenerate
/// at 0/n or n/n, which are common here (e.g. 50/50 successes). Formula and rounding follow
/// `statsmodels.stats.proportion.proportion_confint(k, n, alpha=1 - confidence,
/// method="wilson")`, with z = the normal quantile at `1 - (1 - confidence) / 2` (1.959964 for
/// 0.95), then clamped to `[0, 1]` as statsmodels does. The bound at the observed edge is made
/// exact (0/n → lower 0.0, n/n → upper 1.0) where statsmodels can be off by rounding (~1e-17).
///
/// `n = 0` gives `(0.0, 1.0)` — nothing is known — where statsmodels gives `(nan, nan)`.
/// `confidence` ≥ 1 gives `(0.0, 1.0)`; `confidence` ≤ 0 gives the point `(k/n, k/n)`.
///
/// # Panics
///
/// If `successes > n` or `confidence` is NaN: both are caller bugs, not data.
pub fn wilson(successes: u64, n: u64, confidence: f64) -> (f64, f64) {
    assert!(
        successes <= n,
        "wilson: {successes} successes out of only {n} trials"
    );
    assert!(!confidence.is_nan(), "wilson: confidence is NaN");
    if n == 0 || confidence >= 1.0 {
        return (0.0, 1.0);
    }
    let nobs = n as f64;
    let q = successes as f64 / nobs;
    if confidence <= 0.0 {
        return (q, q);
    }
    let crit = normal_quantile(1.0 - (1.0 - confidence) / 2.0);
    let crit2 = crit * crit;
    let denom = 1.0 + crit2 / nobs;
    let center = (q + crit2 / (2.0 * nobs)) / denom;
    let dist = crit * (q * (1.0 - q) / nobs + crit2 / (4.0 * nobs * nobs)).sqrt() / denom;
    // At 0/n the lower bound is exactly 0 (and at n/n the upper exactly 1); the formula only
    // gets there up to rounding, which statsmodels leaves in (it prints 0/3 as 5.6e-17).
    let lower = if successes == 0 { 0.0 } else { center - dist };
    let upper = if successes == n { 1.0 } else { center + dist };
    (lower.clamp(0.0, 1.0), upper.clamp(0.0, 1.0))
}

/// Two-sided Fisher exact test p-value for the 2×2 table `[[a, b], [c, d]]` (rows = arms,
/// columns = success / failure, e.g. `[[46, 4], [50, 0]]` for 46/50 vs 50/50).
///
/// Definition (scipy.stats.fisher_exact's, also R's `fisher.test`): with all margins fixed, the
/// count in the top-left cell is hypergeometric; the p-value is the sum of the probabilities of
/// all tables whose probability is ≤ the observed table's — "at least as unlikely", not "twice
/// the smaller tail". Ties are judged with the relative tolerance [`FISHER_REL_TOL`] (`1 + 1e-7`;
/// scipy 1.17 itself uses `1 + 1e-14`, see that constant for why we differ and why it does not
/// matter). When every table qualifies (the observed table is a mode, or a margin is zero so only
/// one table exists) the result is exactly `1.0`, as in scipy.
///
/// Probabilities are computed in log space with statrs' ln-binomials, so n = 1000+ per arm
/// works; the cost is one term per possible table (O(min(row, column margin))). The result is
/// clamped to ≤ 1. A p-value below ~1e-308 underflows to 0.0 (scipy gives 0.0 there too).
pub fn fisher_exact_two_sided(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let row1 = a + b;
    let row2 = c + d;
    let col1 = a + c;
    // Top-left cell x ranges over lo..=hi; the rest of the table follows from the margins.
    let lo = col1.saturating_sub(row2);
    let hi = col1.min(row1);
    // ln of the hypergeometric probability without the common denominator ln C(N, col1),
    // which cancels in every comparison.
    let ln_weight = |x: u64| ln_binomial(row1, x) + ln_binomial(row2, col1 - x);
    let observed = ln_weight(a);
    let cutoff = observed + FISHER_REL_TOL.ln_1p();
    let mut sum_rel = 0.0; // Σ p(x) / p(observed) over the qualifying tables
    let mut all_qualify = true;
    for x in lo..=hi {
        let w = ln_weight(x);
        if w <= cutoff {
            sum_rel += (w - observed).exp();
        } else {
            all_qualify = false;
        }
    }
    if all_qualify {
        return 1.0;
    }
    let ln_total = ln_binomial(row1 + row2, col1);
    (observed - ln_total + sum_rel.ln()).exp().min(1.0)
}

/// Cohen's h effect size from proportion `p1` to `p2`: `2·asin(√p2) − 2·asin(√p1)`.
///
/// Positive when `p2 > p1` (so "baseline → fine-tuned" is positive for an improvement). Same
/// value as statsmodels' `proportion_effectsize(p2, p1)`. The arcsine transform makes a
/// difference of 0.92 → 1.0 (h ≈ 0.57) count for more than 0.50 → 0.58, as it should for
/// detectability. Inputs outside `[0, 1]` give NaN.
pub fn cohens_h(p1: f64, p2: f64) -> f64 {
    2.0 * p2.sqrt().asin() - 2.0 * p1.sqrt().asin()
}

/// Cohen's (1988) verbal label for an effect size `h`, by its magnitude `|h|`:
/// `"negligible"` < 0.2 ≤ `"small"` < 0.5 ≤ `"medium"` < 0.8 ≤ `"large"`.
///
/// Boundaries belong to the larger label (h = 0.2 is "small"), as in the published report's
/// legend. The sign is ignored (a large drop is "large"); NaN is `"negligible"`.
pub fn h_label(h: f64) -> &'static str {
    let m = h.abs();
    if m >= 0.8 {
        "large"
    } else if m >= 0.5 {
        "medium"
    } else if m >= 0.2 {
        "small"
    } else {
        "negligible"
    }
}

/// Significance stars for a p-value, the convention of the published report:
/// `"***"` p < 0.001, `"**"` p < 0.01, `"*"` p < 0.05, `""` otherwise (and for NaN).
///
/// Thresholds are strict: p = 0.05 exactly gets no star.
pub fn stars(p: f64) -> &'static str {
    if p < 0.001 {
        "***"
    } else if p < 0.01 {
        "**"
    } else if p < 0.05 {
        "*"
    } else {
        ""
    }
}

/// Trials per arm needed to detect success rates `p1` vs `p2` with a two-sided test at level
/// `alpha` with probability `power`, using the arcsine (Cohen's h) normal approximation.
///
/// This is `ceil(NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power,
/// ratio=1))` from statsmodels: with `h = cohens_h(p1, p2)` and the test statistic
/// `|h|·√(n/2)` (the variance of `2·asin√p̂` is 1/n per arm, so 2/n for the difference), it
/// solves `Φ(|h|√(n/2) − z) + Φ(−|h|√(n/2) − z) = power` with `z = z_{1−α/2}` exactly — both
/// tails, like statsmodels — by bisection, then rounds up. Dropping the tiny second tail gives
/// the closed form `n = 2·((z_{1−α/2} + z_power) / |h|)²` (Cohen's tables: h = 0.2 → 392.4),
/// which is at most a fraction of a trial larger. Note the factor 2: `((z + z)/h)²` alone would
/// be the per-arm size for a one-sample test and is half of what statsmodels reports. Agreement
/// with statsmodels after the ceil is exact in the tested cases; if the real solution sits
/// within solver noise of an integer the two could differ by 1.
///
/// `None` when `p1 == p2` (no effect to detect, n would be infinite), when any input is NaN or
/// outside `[0, 1]`, or when `alpha` or `power` is exactly 0 or 1 (no finite n). If
/// `power <= alpha` any sample size suffices and the answer is `Some(1)`.
pub fn n_per_arm_for_power(p1: f64, p2: f64, alpha: f64, power: f64) -> Option<u64> {
    let unit = |x: f64| (0.0..=1.0).contains(&x);
    let open_unit = |x: f64| x > 0.0 && x < 1.0;
    if !(unit(p1) && unit(p2) && open_unit(alpha) && open_unit(power)) || p1 == p2 {
        return None;
    }
    let h = cohens_h(p1, p2).abs();
    if h == 0.0 {
        return None;
    }
    if power <= alpha {
        return Some(1);
    }
    let z = normal_quantile(1.0 - alpha / 2.0);
    let achieved = |n: f64| {
        let shift = h * (n / 2.0).sqrt();
        normal_cdf(shift - z) + normal_cdf(-shift - z)
    };
    // The one-tail closed form overshoots (the other tail adds power), so it bounds the root.
    let mut hi = 2.0 * ((z + normal_quantile(power)) / h).powi(2);
    let mut lo = 0.0;
    // Guard against statrs rounding leaving `achieved(hi)` a hair short of the target.
    while achieved(hi) < power {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if achieved(mid) < power {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some((hi.ceil() as u64).max(1))
}

/// The power of the two-sided Fisher exact test ([`fisher_exact_two_sided`]) at level `alpha`
/// with `n` trials per arm, when the true success rates are `p1` and `p2`: the probability,
/// over the two binomials, of a table the test rejects.
///
/// Exact enumeration, organised by the total number of successes `k`: every table with total
/// `k` has the same hypergeometric null distribution over its top-left cell, so the tables
/// whose p-value is `≤ alpha` are found once per `k` — a cell's p-value is the sum over the
/// cells no more probable (ties within [`FISHER_REL_TOL`], as the test itself judges them),
/// and the distribution is unimodal, so the rejected cells are the two tails and the accepted
/// ones the centre: the centre, walked outwards from the mode, is what is visited, and the
/// power is one minus its binomial probability. n = 5,000 per arm takes milliseconds.
///
/// Why not the normal approximation: at rates near 0% or 100%, where this experiment lives,
/// it promises far more than Fisher's test delivers (0% → 5% with 78 per arm: 20% power, not
/// 80%).
pub fn fisher_power(n: u64, p1: f64, p2: f64, alpha: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let nu = n as usize;
    let lnc: Vec<f64> = (0..=n).map(|x| ln_binomial(n, x)).collect();
    let lnc2: Vec<f64> = (0..=2 * n).map(|k| ln_binomial(2 * n, k)).collect();
    let pmf = |p: f64| -> Vec<f64> {
        (0..=nu)
            .map(|x| {
                let succ = if x == 0 { 0.0 } else { x as f64 * p.ln() };
                let fail = if x == nu {
                    0.0
                } else {
                    (nu - x) as f64 * (1.0 - p).ln()
                };
                (lnc[x] + succ + fail).exp()
            })
            .collect()
    };
    let (b1, b2) = (pmf(p1), pmf(p2));
    let tol = FISHER_REL_TOL.ln_1p();
    // Power = 1 − P(accepted). The accepted cells of each k are the central ones (p-value
    // above alpha): walked outwards from the mode of the null distribution, most probable
    // first, a group of ties at a time, until the mass left — the p-value of the next group —
    // is at most alpha. That visits ~4σ cells per k instead of the two long tails: n = 5,000
    // per arm costs ~1.5 M cells, not 25 M.
    let mut accepted = 0.0;
    for k in 0..=2 * nu {
        let ln_w = |x: usize| lnc[x] + lnc[k - x] - lnc2[k];
        let (lo, hi) = (k.saturating_sub(nu), k.min(nu));
        // Both arms have n trials, so the mode is ⌊(k + 1) / 2⌋ (or its neighbour).
        let m = (k.div_ceil(2)).clamp(lo, hi);
        // Taken so far: [l, r) — empty at first.
        let (mut l, mut r) = (m, m);
        let mut mass = 0.0;
        loop {
            let left = (l > lo).then(|| ln_w(l - 1));
            let right = (r <= hi).then(|| ln_w(r));
            let top = match (left, right) {
                (None, None) => break,
                (Some(a), None) | (None, Some(a)) => a,
                (Some(a), Some(b)) => a.max(b),
            };
            let cut = top - tol;
            let (mut group, mut hit) = (0.0, 0.0);
            while l > lo && ln_w(l - 1) >= cut {
                l -= 1;
                group += ln_w(l).exp();
                hit += b1[l] * b2[k - l];
            }
            while r <= hi && ln_w(r) >= cut {
                group += ln_w(r).exp();
                hit += b1[r] * b2[k - r];
                r += 1;
            }
            // This group's p-value: the mass of every cell not more probable than it.
            if 1.0 - mass <= alpha {
                break;
            }
            accepted += hit;
            mass += group;
        }
    }
    let power = 1.0 - accepted;
    power.clamp(0.0, 1.0)
}

/// The smallest number of trials per arm at which [`fisher_power`] reaches `power`, searched
/// up to `max_n`; `None` when even `max_n` is not enough (or the rates are equal).
///
/// An exact test's power is not monotone in n (it saw-tooths with the discreteness of the
/// tables), so this is the first n found by bisection where the target is met, then walked
/// down while smaller n still meet it; a slightly smaller n may dip below and a larger one
/// back above, and the report says "about".
pub fn n_per_arm_for_fisher_power(
    p1: f64,
    p2: f64,
    alpha: f64,
    power: f64,
    max_n: u64,
) -> Option<u64> {
    let unit = |x: f64| (0.0..=1.0).contains(&x);
    if !(unit(p1) && unit(p2))
        || p1 == p2
        || !(alpha > 0.0 && alpha < 1.0)
        || !(power > 0.0 && power < 1.0)
    {
        return None;
    }
    // Far beyond max_n by the normal approximation (which promises too much, not too little,
    // at extreme rates): not worth enumerating.
    if n_per_arm_for_power(p1, p2, alpha, power).is_none_or(|n| n > 4 * max_n) {
        return None;
    }
    // Doubling, then bisection between the last miss and the first hit.
    let (mut lo, mut hi) = (0u64, 1u64);
    while fisher_power(hi, p1, p2, alpha) < power {
        if hi >= max_n {
            return None;
        }
        lo = hi;
        hi = (hi * 2).min(max_n);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fisher_power(mid, p1, p2, alpha) >= power {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    while hi > 1 && fisher_power(hi - 1, p1, p2, alpha) >= power {
        hi -= 1;
    }
    Some(hi)
}

/// The Cochran–Mantel–Haenszel test of a common effect over strata (here: tasks), each a 2×2
/// table `(a, b, c, d)` = (successes, failures) of the first arm, then of the second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cmh {
    /// The Mantel–Haenszel χ² statistic (1 degree of freedom), with continuity correction.
    pub chi2: f64,
    /// Its two-sided p-value.
    pub p: f64,
    /// The Mantel–Haenszel common odds ratio (second arm's odds of success over the first's);
    /// infinite or zero when every stratum points one way with a zero cell.
    pub odds_ratio: f64,
}

/// [`Cmh`] over `tables`, as `statsmodels.stats.contingency_tables.StratifiedTable(tables)
/// .test_null_odds(correction=True)` and `.oddsratio_pooled` compute it, with each table
/// `[[a, b], [c, d]]`. Strata with fewer than two trials carry no information and are
/// skipped (statsmodels would divide by zero on them). `None` when no stratum is left or the
/// variance is zero (every stratum all-pass or all-fail: nothing can differ).
///
/// Why beside the pooled Fisher test: tasks differ hugely in base rate, and pooling them
/// mixes those differences into the comparison (Simpson's paradox when arms differ in how
/// many trials each task has); CMH compares the arms within each task and then combines.
pub fn cochran_mantel_haenszel(tables: &[(u64, u64, u64, u64)]) -> Option<Cmh> {
    let (mut obs, mut exp, mut var) = (0.0, 0.0, 0.0);
    let (mut or_num, mut or_den) = (0.0, 0.0);
    let mut any = false;
    for &(a, b, c, d) in tables {
        let (a, b, c, d) = (a as f64, b as f64, c as f64, d as f64);
        let n = a + b + c + d;
        if n < 2.0 {
            continue;
        }
        any = true;
        let (r1, r2) = (a + b, c + d);
        let (c1, c2) = (a + c, b + d);
        obs += a;
        exp += r1 * c1 / n;
        var += r1 * r2 * c1 * c2 / (n * n * (n - 1.0));
        or_num += a * d / n;
        or_den += b * c / n;
    }
    if !any || var <= 0.0 {
        return None;
    }
    let chi2 = ((obs - exp).abs() - 0.5).max(0.0).powi(2) / var;
    let p = ChiSquared::new(1.0).ok()?.sf(chi2);
    // statsmodels' pooled odds ratio is of the first row's odds over the second's; report the
    // second arm's over the first's, the direction every other effect here takes.
    let odds_ratio = if or_num == 0.0 && or_den == 0.0 {
        f64::NAN
    } else {
        or_den / or_num
    };
    Some(Cmh {
        chi2,
        p,
        odds_ratio,
    })
}

/// Holm's step-down adjustment of `p` (any order; the result is in the same order), as
/// `statsmodels.stats.multitest.multipletests(p, method="holm")[1]`: controls the chance of
/// any false positive among the family at α without assuming independence.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let adj = ((m - rank) as f64 * p[i]).min(1.0);
        running = running.max(adj);
        out[i] = running;
    }
    out
}

/// First quartile, median and third quartile `(q25, median, q75)` of `values`, with linear
/// interpolation between order statistics — `numpy.percentile(values, [25, 50, 75])` with its
/// default `method="linear"` (type 7 of Hyndman & Fan, also R's default).
///
/// The position of quantile q in the sorted values is `q·(n − 1)`; between neighbours `a`, `b`
/// with fraction `t` the value is `a + (b − a)·t`, or `b − (b − a)·(1 − t)` when `t ≥ 0.5`, which is
/// numpy's own rounding-friendly form, so results agree to the last bit. `None` for an empty
/// slice; if any value is NaN all three are NaN, as in numpy. The input need not be sorted.
pub fn quartiles(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    if values.iter().any(|v| v.is_nan()) {
        return Some((f64::NAN, f64::NAN, f64::NAN));
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let last = sorted.len() - 1;
    let at = |q: f64| {
        let pos = q * last as f64;
        let below = (pos.floor() as usize).min(last);
        let above = (below + 1).min(last);
        let t = pos - below as f64;
        let (a, b) = (sorted[below], sorted[above]);
        let diff = b - a;
        if t >= 0.5 {
            b - diff * (1.0 - t)
        } else {
            a + diff * t
        }
    };
    Some((at(0.25), at(0.5), at(0.75)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative tolerance for values scipy/statsmodels give to full double precision.
    const REL: f64 = 1e-9;

    fn assert_close(ours: f64, reference: f64, rel: f64, what: &str) {
        let ok = if reference == 0.0 {
            ours.abs() <= 1e-300
        } else {
            ((ours - reference) / reference).abs() <= rel
        };
        assert!(ok, "{what}: ours {ours:e} vs reference {reference:e}");
    }

    #[test]
    fn fisher_matches_scipy() {
        // (table, scipy.stats.fisher_exact(table).pvalue) — scipy 1.17.1, default two-sided.
        let cases: &[([u64; 4], f64)] = &[
            // fisher_exact([[46, 4], [50, 0]]) — LRU 92 → 100 in TASKS.md, p = 0.1175
            ([46, 4, 50, 0], 0.11746329272102468),
            // fisher_exact([[0, 50], [0, 50]])
            ([0, 50, 0, 50], 1.0),
            // fisher_exact([[50, 0], [50, 0]])
            ([50, 0, 50, 0], 1.0),
            // fisher_exact([[45, 5], [49, 1]])
            ([45, 5, 49, 1], 0.20440158503099357),
            // fisher_exact([[35, 15], [49, 1]]) — Template 70 → 98 in TASKS.md, p = 0.0002
            ([35, 15, 49, 1], 0.00017455770072532386),
            // fisher_exact([[45, 5], [50, 0]]) — Password 90 → 100 in TASKS.md, p = 0.0563
            ([45, 5, 50, 0], 0.05628449442882433),
            // fisher_exact([[1, 0], [0, 1]])
            ([1, 0, 0, 1], 1.0),
            // fisher_exact([[3, 4], [12, 8]]) — 3/7 vs 12/20
            ([3, 4, 12, 8], 0.6618357487922706),
            // fisher_exact([[480, 520], [530, 470]])
            ([480, 520, 530, 470], 0.028393696370678335),
            // fisher_exact([[1000, 0], [990, 10]])
            ([1000, 0, 990, 10], 0.0019094651653416143),
            // fisher_exact([[500, 500], [500, 500]])
            ([500, 500, 500, 500], 1.0),
            // fisher_exact([[0, 50], [50, 0]])
            ([0, 50, 50, 0], 1.9823306042836675e-29),
            // fisher_exact([[0, 1000], [1000, 0]]) — underflows in scipy too
            ([0, 1000, 1000, 0], 0.0),
            // fisher_exact([[5, 5], [5, 5]]) — observed table is the mode
            ([5, 5, 5, 5], 1.0),
            // fisher_exact([[2, 3], [3, 2]]) — tied with its mirror image [[3, 2], [2, 3]]
            ([2, 3, 3, 2], 1.0),
            // fisher_exact([[3, 1], [1, 3]]) — the mirror [[1, 3], [3, 1]] ties and counts
            ([3, 1, 1, 3], 0.48571428571428565),
            // fisher_exact([[0, 5], [5, 0]])
            ([0, 5, 5, 0], 0.007936507936507938),
            // Ties that floating point computes a few 1e-13 apart (so a 1e-14 tolerance misses them):
            // fisher_exact([[2, 17], [2, 27]]) — observed ties with the mode
            ([2, 17, 2, 27], 1.0),
            // fisher_exact([[15, 8], [389, 234]])
            ([15, 8, 389, 234], 1.0),
            // fisher_exact([[42, 106], [119, 55]])
            ([42, 106, 119, 55], 9.232477465562848e-13),
            // fisher_exact([[1, 9], [11, 3]])
            ([1, 9, 11, 3], 0.0027594561852200836),
            // fisher_exact([[7, 2], [1, 9]])
            ([7, 2, 1, 9], 0.005477494641581328),
        ];
        for &([a, b, c, d], want) in cases {
            let got = fisher_exact_two_sided(a, b, c, d);
            assert_close(got, want, REL, &format!("fisher [[{a},{b}],[{c},{d}]]"));
        }
        // The 1.0 cases are exactly 1.0, not 0.9999999999.
        assert_eq!(fisher_exact_two_sided(5, 5, 5, 5), 1.0);
        assert_eq!(fisher_exact_two_sided(2, 3, 3, 2), 1.0);
        assert_eq!(fisher_exact_two_sided(0, 0, 0, 0), 1.0);
    }

    #[test]
    fn fisher_is_symmetric_in_rows_and_columns() {
        // Swapping arms or swapping success/failure does not change a two-sided p-value.
        let p = fisher_exact_two_sided(3, 4, 12, 8);
        assert_close(
            fisher_exact_two_sided(12, 8, 3, 4),
            p,
            1e-12,
            "rows swapped",
        );
        assert_close(
            fisher_exact_two_sided(4, 3, 8, 12),
            p,
            1e-12,
            "columns swapped",
        );
        assert_close(fisher_exact_two_sided(3, 12, 4, 8), p, 1e-12, "transposed");
    }

    #[test]
    fn wilson_matches_statsmodels() {
        // proportion_confint(k, n, alpha=0.05, method="wilson") — statsmodels 0.15.0
        let cases: &[(u64, u64, f64, f64)] = &[
            // proportion_confint(0, 50, alpha=0.05, method="wilson")
            (0, 50, 0.0, 0.07134759913335874),
            // proportion_confint(50, 50, alpha=0.05, method="wilson")
            (50, 50, 0.9286524008666412, 1.0),
            // proportion_confint(25, 50, alpha=0.05, method="wilson")
            (25, 50, 0.3664451431682858, 0.6335548568317142),
            // proportion_confint(46, 50, alpha=0.05, method="wilson")
            (46, 50, 0.8116175308165716, 0.9684504859114069),
            // proportion_confint(1, 1, alpha=0.05, method="wilson")
            (1, 1, 0.2065493143772374, 1.0),
            // proportion_confint(3, 7, alpha=0.05, method="wilson")
            (3, 7, 0.15821985525146964, 0.7495416354723428),
        ];
        for &(k, n, lo, hi) in cases {
            let (l, h) = wilson(k, n, 0.95);
            assert_close(l, lo, REL, &format!("wilson {k}/{n} lower"));
            assert_close(h, hi, REL, &format!("wilson {k}/{n} upper"));
            assert!((0.0..=1.0).contains(&l) && (0.0..=1.0).contains(&h));
        }
        // proportion_confint(46, 50, alpha=0.10, method="wilson")
        let (l, h) = wilson(46, 50, 0.90);
        assert_close(l, 0.8333021052798535, REL, "wilson 90% lower");
        assert_close(h, 0.9635780186596796, REL, "wilson 90% upper");
        // proportion_confint(0, 0, ...) is (nan, nan) in statsmodels; we say "anything".
        assert_eq!(wilson(0, 0, 0.95), (0.0, 1.0));
        assert_eq!(wilson(0, 50, 0.95).0, 0.0);
        assert_eq!(wilson(50, 50, 0.95).1, 1.0);
        // proportion_confint(0, 3, alpha=0.05, method="wilson") → (5.551115123125783e-17,
        // 0.5614970317550454): statsmodels' lower bound is rounding noise; ours is exactly 0.
        let (l, h) = wilson(0, 3, 0.95);
        assert_eq!(l, 0.0);
        assert_close(h, 0.5614970317550454, REL, "wilson 0/3 upper");
    }

    #[test]
    fn normal_quantile_matches_scipy() {
        // scipy.stats.norm.isf(0.025), scipy.stats.norm.ppf(0.8)
        assert_close(normal_quantile(0.975), 1.9599639845400545, 1e-12, "z 0.975");
        assert_close(normal_quantile(0.8), 0.8416212335729143, 1e-12, "z 0.8");
    }

    #[test]
    #[should_panic(expected = "successes")]
    fn wilson_rejects_more_successes_than_trials() {
        wilson(51, 50, 0.95);
    }

    #[test]
    fn cohens_h_matches_numpy() {
        // 2*np.arcsin(np.sqrt(p2)) - 2*np.arcsin(np.sqrt(p1)), equal to
        // statsmodels.stats.proportion.proportion_effectsize(p2, p1)
        let cases: &[(f64, f64, f64)] = &[
            (0.92, 1.0, 0.5735131044230966),  // TASKS.md: LRU h = 0.57
            (0.70, 0.98, 0.8754853715190813), // TASKS.md: Template h = 0.88
            (0.90, 1.0, 0.6435011087932843),  // TASKS.md: Password h = 0.64
            (0.57, 0.62, 0.10190443632910773),
            (0.20, 0.32, 0.27523321535664447),
            (1.0, 0.0, -std::f64::consts::PI),
        ];
        for &(p1, p2, want) in cases {
            assert_close(cohens_h(p1, p2), want, 1e-12, &format!("h({p1}, {p2})"));
            assert_close(cohens_h(p2, p1), -want, 1e-12, "h is antisymmetric");
        }
        assert_eq!(cohens_h(0.5, 0.5), 0.0);
    }

    #[test]
    fn h_labels_at_the_boundaries() {
        assert_eq!(h_label(0.0), "negligible");
        assert_eq!(h_label(0.1999), "negligible");
        assert_eq!(h_label(0.2), "small");
        assert_eq!(h_label(-0.2), "small");
        assert_eq!(h_label(0.4999), "small");
        assert_eq!(h_label(0.5), "medium");
        assert_eq!(h_label(-0.6), "medium");
        assert_eq!(h_label(0.7999), "medium");
        assert_eq!(h_label(0.8), "large");
        assert_eq!(h_label(-3.0), "large");
        assert_eq!(h_label(f64::NAN), "negligible");
        assert_eq!(h_label(cohens_h(0.92, 1.0)), "medium");
        assert_eq!(h_label(cohens_h(0.70, 0.98)), "large");
    }

    #[test]
    fn stars_thresholds_are_strict() {
        assert_eq!(stars(0.00017455770072532386), "***");
        assert_eq!(stars(0.001), "**");
        assert_eq!(stars(0.0055), "**");
        assert_eq!(stars(0.01), "*");
        assert_eq!(stars(0.028), "*");
        assert_eq!(stars(0.05), "");
        assert_eq!(stars(0.1175), "");
        assert_eq!(stars(1.0), "");
        assert_eq!(stars(f64::NAN), "");
    }

    #[test]
    fn power_matches_statsmodels() {
        // h = 2*np.arcsin(np.sqrt(p2)) - 2*np.arcsin(np.sqrt(p1))
        // np.ceil(NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=1))
        // (statsmodels 0.15.0; the raw solution is in the comment)
        let cases: &[(f64, f64, f64, f64, u64)] = &[
            (0.57, 0.62, 0.05, 0.8, 1512), // 1511.6471316645443
            (0.20, 0.32, 0.05, 0.8, 208),  // 207.22155053104058
            (0.92, 1.0, 0.05, 0.8, 48),    // 47.72543748105834
            (0.70, 0.98, 0.05, 0.8, 21),   // 20.48041904509614
            (0.57, 0.64, 0.05, 0.9, 1023), // 1022.9055452929027
            (0.50, 0.60, 0.01, 0.8, 577),  // 576.098883522826
        ];
        for &(p1, p2, alpha, power, want) in cases {
            assert_eq!(
                n_per_arm_for_power(p1, p2, alpha, power),
                Some(want),
                "n for {p1} vs {p2}, alpha {alpha}, power {power}"
            );
            // The direction of the effect does not matter for a two-sided test.
            assert_eq!(n_per_arm_for_power(p2, p1, alpha, power), Some(want));
        }
    }

    #[test]
    fn fisher_power_is_the_rejection_probability_of_the_test_itself() {
        // Brute force: every pair of outcomes, judged by fisher_exact_two_sided.
        let binom = |n: u64, x: u64, p: f64| {
            (ln_binomial(n, x) + x as f64 * p.ln() + (n - x) as f64 * (1.0 - p).ln()).exp()
        };
        for &(n, p1, p2) in &[
            (12u64, 0.2, 0.6),
            (9, 0.5, 0.9),
            (15, 0.1, 0.35),
            (20, 0.7, 0.75),
        ] {
            let mut want = 0.0;
            for x1 in 0..=n {
                for x2 in 0..=n {
                    if fisher_exact_two_sided(x1, n - x1, x2, n - x2) <= 0.05 {
                        want += binom(n, x1, p1) * binom(n, x2, p2);
                    }
                }
            }
            let got = fisher_power(n, p1, p2, 0.05);
            assert!(
                (got - want).abs() < 1e-12,
                "n {n}, {p1} vs {p2}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn fisher_power_at_the_rates_this_experiment_lives_at() {
        // Values computed independently for Fisher's two-sided test at α = 0.05 (quoted with
        // the sample sizes the arcsine approximation recommends, and the power they really
        // give): 0% → 5% at 78 per arm gives 20%; 96.7% → 100% at 117 gives 19%; 0% → 13.3%
        // at 29 gives 18%; 80% for 0% → 5% needs about 160.
        let close = |got: f64, want: f64| (got - want).abs() < 0.01;
        let p = fisher_power(78, 0.0, 0.05, 0.05);
        assert!(close(p, 0.20), "{p}");
        let p = fisher_power(117, 0.967, 1.0, 0.05);
        assert!(close(p, 0.19), "{p}");
        let p = fisher_power(29, 0.0, 0.133, 0.05);
        assert!(close(p, 0.18), "{p}");
        let n = n_per_arm_for_fisher_power(0.0, 0.05, 0.05, 0.8, 1000).unwrap();
        assert!((150..=170).contains(&n), "{n}");
        assert!(fisher_power(n, 0.0, 0.05, 0.05) >= 0.8);
        assert_eq!(n_per_arm_for_fisher_power(0.3, 0.3, 0.05, 0.8, 1000), None);
        assert_eq!(n_per_arm_for_fisher_power(0.50, 0.51, 0.05, 0.8, 100), None);
    }

    #[test]
    fn power_refuses_degenerate_inputs() {
        assert_eq!(n_per_arm_for_power(0.5, 0.5, 0.05, 0.8), None);
        assert_eq!(n_per_arm_for_power(-0.1, 0.5, 0.05, 0.8), None);
        assert_eq!(n_per_arm_for_power(0.5, 1.1, 0.05, 0.8), None);
        assert_eq!(n_per_arm_for_power(f64::NAN, 0.5, 0.05, 0.8), None);
        assert_eq!(n_per_arm_for_power(0.2, 0.5, 0.0, 0.8), None);
        assert_eq!(n_per_arm_for_power(0.2, 0.5, 0.05, 1.0), None);
        assert_eq!(n_per_arm_for_power(0.2, 0.5, 0.05, 0.01), Some(1));
    }

    #[test]
    fn quartiles_match_numpy() {
        // np.percentile([3.0, 1.0, 4.0, 1.0, 5.0], [25, 50, 75]) → [1.0, 3.0, 4.0]
        assert_eq!(quartiles(&[3.0, 1.0, 4.0, 1.0, 5.0]), Some((1.0, 3.0, 4.0)));
        // np.percentile([3.0, 1.0, 4.0, 1.0, 5.0, 9.0], [25, 50, 75]) → [1.5, 3.5, 4.75]
        assert_eq!(
            quartiles(&[3.0, 1.0, 4.0, 1.0, 5.0, 9.0]),
            Some((1.5, 3.5, 4.75))
        );
        // np.percentile([0.5, 2.25, -1.0, 10.0, 3.5, 3.5, 8.0, 6.125], [25, 50, 75])
        //   → [1.8125, 3.5, 6.59375]
        assert_eq!(
            quartiles(&[0.5, 2.25, -1.0, 10.0, 3.5, 3.5, 8.0, 6.125]),
            Some((1.8125, 3.5, 6.59375))
        );
        // np.percentile([7.5], [25, 50, 75]) → [7.5, 7.5, 7.5]
        assert_eq!(quartiles(&[7.5]), Some((7.5, 7.5, 7.5)));
        assert_eq!(quartiles(&[]), None);
        let (a, b, c) = quartiles(&[1.0, f64::NAN]).unwrap();
        assert!(a.is_nan() && b.is_nan() && c.is_nan());
    }

    /// Pinned from statsmodels 0.14 (`StratifiedTable(tables).test_null_odds(correction=True)`,
    /// `1 / oddsratio_pooled`), each table `[[a, b], [c, d]]`.
    #[test]
    fn cmh_matches_statsmodels() {
        type Case<'a> = (&'a [(u64, u64, u64, u64)], f64, f64, f64);
        let cases: [Case; 4] = [
            (
                &[(3, 1, 4, 0), (2, 2, 3, 1), (0, 4, 1, 3)],
                0.9655172413793105,
                0.325800716285529,
                7.0,
            ),
            (
                &[(10, 40, 15, 35), (30, 20, 33, 17), (45, 5, 48, 2)],
                2.038295243977764,
                0.15338145791404068,
                1.5789473684210527,
            ),
            (
                &[(0, 8, 3, 5)],
                1.5384615384615383,
                0.2148469474056489,
                f64::INFINITY,
            ),
            (
                &[
                    (47, 3, 50, 0),
                    (0, 50, 2, 48),
                    (25, 25, 30, 20),
                    (5, 45, 9, 41),
                ],
                4.016082573211714,
                0.04506828117591255,
                1.99290780141844,
            ),
        ];
        for (tables, chi2, p, or) in cases {
            let r = cochran_mantel_haenszel(tables).unwrap();
            assert!(
                (r.chi2 - chi2).abs() < 1e-12 * chi2.max(1.0),
                "{tables:?}: {r:?}"
            );
            assert!((r.p - p).abs() < 1e-9, "{tables:?}: {r:?}");
            if or.is_finite() {
                assert!((r.odds_ratio - or).abs() < 1e-12 * or, "{tables:?}: {r:?}");
            } else {
                assert!(r.odds_ratio.is_infinite(), "{tables:?}: {r:?}");
            }
        }
        // Nothing can differ: every stratum all-pass (zero variance), or no stratum at all.
        assert_eq!(cochran_mantel_haenszel(&[(5, 0, 5, 0), (3, 0, 4, 0)]), None);
        assert_eq!(cochran_mantel_haenszel(&[]), None);
        assert_eq!(cochran_mantel_haenszel(&[(1, 0, 0, 0)]), None);
    }

    /// Pinned from statsmodels 0.14 `multipletests(p, method="holm")[1]`.
    #[test]
    fn holm_matches_statsmodels() {
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(
            &holm(&[0.01, 0.04, 0.03, 0.2]),
            &[0.04, 0.09, 0.09, 0.2]
        ));
        assert!(close(&holm(&[0.5, 0.001, 0.02]), &[0.5, 0.003, 0.04]));
        assert!(close(&holm(&[0.04, 0.04]), &[0.08, 0.08]));
        assert!(holm(&[]).is_empty());
    }
}
