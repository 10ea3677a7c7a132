//! Organ-presence metrics: AUROC (ties as scikit-learn's `roc_auc_score`,
//! i.e. the Mann–Whitney statistic with average ranks), the ROC curve, and
//! F1 at a threshold (an empty prediction scores 0).

/// AUROC of `scores` against 0/1 `labels`; `None` when the labels hold only
/// one class (the AUROC is undefined).
pub fn auroc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l != 0).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 || scores.len() != labels.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (from 1) over runs of equal scores.
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg * order[i..=j].iter().filter(|&&k| labels[k] != 0).count() as f64;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

/// The ROC curve `(false-positive rate, true-positive rate)` from the
/// highest threshold down, one point per distinct score; empty when
/// undefined.
pub fn roc_curve(scores: &[f64], labels: &[u8]) -> Vec<(f64, f64)> {
    let pos = labels.iter().filter(|&&l| l != 0).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] != 0 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_tie {
            points.push((fp / neg, tp / pos));
        }
    }
    points
}

/// F1 of the predictions `score ≥ threshold`: 2TP / (2TP + FP + FN), and 0
/// when that is 0/0 (nothing predicted and nothing present).
pub fn f1(scores: &[f64], labels: &[u8], threshold: f64) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (&s, &l) in scores.iter().zip(labels) {
        match (s >= threshold, l != 0) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    let den = 2 * tp + fp + fn_;
    if den == 0 {
        0.0
    } else {
        2.0 * tp as f64 / den as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases_by_hand() {
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]), Some(0.75));
        // A tie between a positive and a negative counts one half.
        assert_eq!(auroc(&[0.5, 0.5], &[0, 1]), Some(0.5));
        assert_eq!(auroc(&[0.2, 0.9], &[1, 1]), None);
        assert_eq!(f1(&[0.9, 0.2, 0.7], &[1, 0, 0], 0.5), 2.0 / 3.0);
        assert_eq!(f1(&[0.1, 0.2], &[0, 0], 0.5), 0.0);
        let c = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]);
        assert_eq!(c.first(), Some(&(0.0, 0.0)));
        assert_eq!(c.last(), Some(&(1.0, 1.0)));
    }
}
