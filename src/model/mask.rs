//! Dual (plane + axis) masking, MODEL.md §4.

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::{DType, Tensor};

/// Which tokens each item of a batch keeps. Every depth slice keeps the same
/// number of tokens (`per_slice`), listed in ascending order, so the visible
/// tokens form a `Dp × per_slice` grid the MATB streams can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DualMask {
    batch: usize,
    tokens: usize,
    slices: usize,
    per_slice: usize,
    ids_keep: Vec<usize>,
}

/// The `k` of `0..n` with the smallest keys (ties by position), ascending.
fn smallest_k(n: usize, k: usize, key: impl Fn(usize) -> u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (key(i), i));
    let mut kept = order[..k].to_vec();
    kept.sort_unstable();
    kept
}

impl DualMask {
    /// Samples a mask per MODEL.md §4: per item, `s_v` in-plane positions uniformly
    /// without replacement, then per slice `a_v` of those. The draws for item
    /// `b` are values `b·S·(1 + Dp) ..` of `rng` (first the plane keys, then
    /// `S` keys per slice), so each item's mask depends only on `rng` and `b`.
    pub fn sample(c: &ModelConfig, batch: usize, rng: RngStream) -> DualMask {
        let (s, slices) = (c.plane_tokens(), c.grid()[0]);
        let (sv, av) = (c.plane_visible(), c.axis_visible());
        let stride = (s * (1 + slices)) as u64;
        let mut ids_keep = Vec::with_capacity(batch * slices * av);
        for b in 0..batch as u64 {
            let base = b * stride;
            let plane = smallest_k(s, sv, |i| rng.bits(base + i as u64));
            for d in 0..slices {
                let slice_base = base + (s * (1 + d)) as u64;
                let kept = smallest_k(sv, av, |j| rng.bits(slice_base + j as u64));
                ids_keep.extend(kept.into_iter().map(|j| d * s + plane[j]));
            }
        }
        DualMask {
            batch,
            tokens: c.num_tokens(),
            slices,
            per_slice: av,
            ids_keep,
        }
    }

    /// Nothing masked: every token visible (inference).
    pub fn full(c: &ModelConfig, batch: usize) -> DualMask {
        let n = c.num_tokens();
        DualMask {
            batch,
            tokens: n,
            slices: c.grid()[0],
            per_slice: c.plane_tokens(),
            ids_keep: (0..batch).flat_map(|_| 0..n).collect(),
        }
    }

    /// From a `B × N` mask (1 = masked, 0 = visible). It must have the dual
    /// structure: every depth slice of every item keeps the same number
    /// (at least one) of tokens.
    pub fn from_mask(c: &ModelConfig, batch: usize, mask: &[u8]) -> Result<DualMask> {
        let n = c.num_tokens();
        if mask.len() != batch * n {
            return Err(Error::invalid(
                "mask",
                format!("{} values for a batch of {batch} × {n} tokens", mask.len()),
            ));
        }
        if let Some(v) = mask.iter().find(|&&v| v > 1) {
            return Err(Error::invalid(
                "mask",
                format!("values must be 0 (visible) or 1 (masked), found {v}"),
            ));
        }
        let per_item: Vec<Vec<usize>> = mask
            .chunks(n)
            .map(|m| m.iter().enumerate().filter(|(_, &v)| v == 0).map(|(i, _)| i).collect())
            .collect();
        if let Some((b, item)) = per_item.iter().enumerate().find(|(_, v)| v.len() != per_item[0].len()) {
            return Err(Error::invalid(
                "mask",
                format!(
                    "item {b} keeps {} tokens, item 0 keeps {}; every item must keep the same number",
                    item.len(),
                    per_item[0].len()
                ),
            ));
        }
        Self::from_ids_keep(c, batch, per_item.concat())
    }

    /// From `ids_keep` (`B·Nv` token indices, ascending per item), checking the
    /// dual structure.
    pub fn from_ids_keep(c: &ModelConfig, batch: usize, ids: Vec<usize>) -> Result<DualMask> {
        let (n, s, slices) = (c.num_tokens(), c.plane_tokens(), c.grid()[0]);
        let bad = |why: String| Err(Error::invalid("mask", why));
        if batch == 0 || !ids.len().is_multiple_of(batch) {
            return bad(format!(
                "{} kept tokens do not split over a batch of {batch}",
                ids.len()
            ));
        }
        let nv = ids.len() / batch;
        if nv == 0 || !nv.is_multiple_of(slices) {
            return bad(format!(
                "{nv} visible tokens per item cannot be the same number in each of the {slices} depth slices"
            ));
        }
        let per_slice = nv / slices;
        for (b, item) in ids.chunks(nv).enumerate() {
            if let Some(&i) = item.iter().find(|&&i| i >= n) {
                return bad(format!("item {b}: token {i} is out of range (N = {n})"));
            }
            if item.windows(2).any(|w| w[0] >= w[1]) {
                return bad(format!("item {b}: kept tokens must be strictly ascending"));
            }
            for d in 0..slices {
                let count = item.iter().filter(|&&i| i / s == d).count();
                if count != per_slice {
                    return bad(format!(
                        "item {b}: depth slice {d} keeps {count} tokens, others {per_slice}; \
                         a dual mask keeps the same number in every slice"
                    ));
                }
            }
        }
        Ok(DualMask {
            batch,
            tokens: n,
            slices,
            per_slice,
            ids_keep: ids,
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Visible tokens per item, `Nv`.
    pub fn visible(&self) -> usize {
        self.slices * self.per_slice
    }

    /// Visible tokens per depth slice (`L` of the encoder's MATBs).
    pub fn per_slice(&self) -> usize {
        self.per_slice
    }

    pub fn slices(&self) -> usize {
        self.slices
    }

    pub fn ids_keep(&self) -> &[usize] {
        &self.ids_keep
    }

    /// `B × N`, 1 where a token is masked.
    pub fn mask_u8(&self) -> Vec<u8> {
        let mut m = vec![1u8; self.batch * self.tokens];
        for (k, &i) in self.ids_keep.iter().enumerate() {
            m[(k / self.visible()) * self.tokens + i] = 0;
        }
        m
    }

    pub fn mask_tensor(&self, dtype: DType) -> Tensor {
        let v: Vec<f64> = self.mask_u8().iter().map(|&m| m as f64).collect();
        Tensor::from_f64_slice(&v, [self.batch, self.tokens], dtype).unwrap_or_else(|_| Tensor::zeros([0], dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_masks_have_the_dual_structure() {
        let c = ModelConfig::small();
        let (s, av, sv) = (c.plane_tokens(), c.axis_visible(), c.plane_visible());
        let m = DualMask::sample(&c, 3, RngStream::new(42, 1));
        assert_eq!(m.visible(), c.visible_tokens());
        for item in m.ids_keep().chunks(m.visible()) {
            assert!(item.windows(2).all(|w| w[0] < w[1]), "ascending");
            for d in 0..c.grid()[0] {
                let slice: Vec<usize> = item[d * av..(d + 1) * av].to_vec();
                assert!(
                    slice.iter().all(|&i| i / s == d),
                    "slice {d} occupies positions d·a_v.."
                );
            }
            let plane: std::collections::BTreeSet<usize> = item.iter().map(|&i| i % s).collect();
            assert!(plane.len() <= sv, "all visible positions come from s_v plane positions");
        }
        assert_eq!(
            DualMask::sample(&c, 3, RngStream::new(42, 1)),
            m,
            "same seed, same mask"
        );
        assert_ne!(DualMask::sample(&c, 3, RngStream::new(43, 1)), m);
        let again = DualMask::from_mask(&c, 3, &m.mask_u8()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn every_position_can_be_drawn() {
        // Uniform draws: over many items every in-plane position is kept sometimes.
        let c = ModelConfig::tiny();
        let m = DualMask::sample(&c, 64, RngStream::new(1, 2));
        let s = c.plane_tokens();
        let mut hits = vec![0usize; s];
        m.ids_keep().iter().for_each(|&i| hits[i % s] += 1);
        assert!(hits.iter().all(|&h| h > 0), "{hits:?}");
    }

    #[test]
    fn masks_without_the_dual_structure_are_rejected() {
        let c = ModelConfig::tiny(); // grid 4×4×4: S = 16, 4 slices
        let mut m = vec![1u8; 64];
        m[0] = 0; // slice 0 keeps one token, the others none
        let e = DualMask::from_mask(&c, 1, &m).unwrap_err().to_string();
        assert!(e.contains("same number"), "{e}");
        m[16] = 0;
        m[32] = 0;
        m[48] = 0;
        assert_eq!(DualMask::from_mask(&c, 1, &m).unwrap().per_slice(), 1);
        m[5] = 2;
        assert!(DualMask::from_mask(&c, 1, &m).is_err());
        assert!(DualMask::from_mask(&c, 2, &[0u8; 64]).is_err());
        assert!(
            DualMask::from_ids_keep(&c, 1, vec![16, 0, 32, 48]).is_err(),
            "not ascending"
        );
    }
}
