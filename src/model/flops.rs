//! FLOP accounting (MODEL.md §13): 2 FLOPs per multiply-add of every matrix
//! product, attention (`q·kᵀ`, `p·v`) and the patch-embedding attention
//! included, for one superpatch.

use super::config::ModelConfig;

/// One module's share of a pass.
#[derive(Clone, Debug, PartialEq)]
pub struct FlopEntry {
    pub module: String,
    pub forward: u64,
    pub backward: u64,
    /// Multiply-adds of the layers the paper's "GFLOPs" figure counts (FFN,
    /// patch-embedding linear layers, head).
    pub paper_macs: u64,
}

/// The FLOPs of one pass over one superpatch, module by module.
#[derive(Clone, Debug, PartialEq)]
pub struct FlopCount {
    pub entries: Vec<FlopEntry>,
}

impl FlopCount {
    pub fn forward(&self) -> u64 {
        self.entries.iter().map(|e| e.forward).sum()
    }
    pub fn backward(&self) -> u64 {
        self.entries.iter().map(|e| e.backward).sum()
    }
    pub fn forward_backward(&self) -> u64 {
        self.forward() + self.backward()
    }
    pub fn paper_macs(&self) -> u64 {
        self.entries.iter().map(|e| e.paper_macs).sum()
    }
}

/// Collects products: `x·Wᵀ` of `m × k` by `k × n`. Its backward costs twice
/// the forward (dX and dW), or once when `x` is the data (no dX is needed).
struct Counter {
    entries: Vec<FlopEntry>,
}

impl Counter {
    fn add(&mut self, module: &str, fwd: u64, bwd: u64, paper_macs: u64) {
        match self.entries.iter_mut().find(|e| e.module == module) {
            Some(e) => {
                e.forward += fwd;
                e.backward += bwd;
                e.paper_macs += paper_macs;
            }
            None => self.entries.push(FlopEntry {
                module: module.to_string(),
                forward: fwd,
                backward: bwd,
                paper_macs,
            }),
        }
    }

    fn matmul(&mut self, module: &str, m: usize, k: usize, n: usize, on_data: bool, paper: bool) {
        let macs = (m * k * n) as u64;
        let bwd = if on_data { 2 * macs } else { 4 * macs };
        self.add(module, 2 * macs, bwd, if paper { macs } else { 0 });
    }

    /// Attention over `seqs` sequences of `len` rows of width `e` (all heads):
    /// `q·kᵀ` and `p·v`, each `seqs·len²·e` multiply-adds; backward recomputes
    /// neither (dQ, dK, dV and dP: four products).
    fn attention(&mut self, module: &str, seqs: usize, len: usize, e: usize) {
        let macs = (seqs * len * len * e) as u64;
        self.add(module, 4 * macs, 8 * macs, 0);
    }

    fn matb(&mut self, prefix: &str, b_t_l: (usize, usize, usize), e: usize, f: usize) {
        let (b, t, l) = b_t_l;
        let m = b * t * l;
        self.matmul(&format!("{prefix} spatial projections"), m, e, 3 * e, false, false);
        self.matmul(&format!("{prefix} spatial projections"), m, e, e, false, false);
        self.attention(&format!("{prefix} spatial attention"), b * t, l, e);
        self.matmul(&format!("{prefix} depth projections"), m, e, 3 * e, false, false);
        self.matmul(&format!("{prefix} depth projections"), m, e, e, false, false);
        self.attention(&format!("{prefix} depth attention"), b * l, t, e);
        self.matmul(&format!("{prefix} FFN"), m, e, f, false, true);
        self.matmul(&format!("{prefix} FFN"), m, f, e, false, true);
    }
}

fn patch_embedding(c: &ModelConfig, cnt: &mut Counter, tokens: usize) {
    let (e, p) = (c.embed_dim, c.patch_dim());
    let name = "patch embedding";
    if !c.use_nemesis_tokens {
        cnt.matmul(name, tokens, p, e, true, true);
        return;
    }
    let (pd, k, te) = (c.patch_size[0], c.num_nemesis_tokens, c.token_dim());
    let rows = tokens * (pd + k);
    cnt.matmul(name, tokens, p, e, true, true);
    cnt.matmul(name, tokens * pd, c.patch_row(), te, true, true);
    cnt.matmul(name, rows, te, 3 * te, false, false);
    cnt.attention(name, tokens, pd + k, te);
    cnt.matmul(name, rows, te, te, false, false);
    // `proj` runs on all pd + K rows before the last K are taken.
    cnt.matmul(name, rows, te, te, false, true);
}

/// The training forward pass (dual masking at the config's ratios) of one superpatch.
pub fn training_flops(c: &ModelConfig) -> FlopCount {
    let mut cnt = Counter { entries: Vec::new() };
    let (dp, av, s) = (c.grid()[0], c.axis_visible(), c.plane_tokens());
    let (e, f, n) = (c.embed_dim, c.ffn_dim, c.num_tokens());
    patch_embedding(c, &mut cnt, dp * av);
    for _ in 0..c.depth {
        cnt.matb("encoder", (1, dp, av), e, f);
    }
    for _ in 0..c.decoder_depth {
        cnt.matb("decoder", (1, dp, s), e, f);
    }
    cnt.matmul("decoder head", n, e, c.patch_dim(), false, true);
    FlopCount { entries: cnt.entries }
}

/// The encoder alone at inference (nothing masked) on one superpatch.
pub fn encoder_flops(c: &ModelConfig) -> FlopCount {
    let mut cnt = Counter { entries: Vec::new() };
    let (dp, s) = (c.grid()[0], c.plane_tokens());
    patch_embedding(c, &mut cnt, c.num_tokens());
    for _ in 0..c.depth {
        cnt.matb("encoder", (1, dp, s), c.embed_dim, c.ffn_dim);
    }
    FlopCount { entries: cnt.entries }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_preset_agrees_with_spec_13() {
        let t = training_flops(&ModelConfig::paper());
        let fwd = t.forward() as f64 / 1e9;
        let both = t.forward_backward() as f64 / 1e9;
        assert!((fwd / 249.4 - 1.0).abs() < 0.005, "forward {fwd} GFLOPs");
        assert!((both / 747.4 - 1.0).abs() < 0.005, "forward+backward {both} GFLOPs");
        let paper = t.paper_macs() as f64 / 1e9;
        assert!((paper - 31.2).abs() < 0.1, "paper figure {paper} G multiply-adds");
    }
}
