use crate::error::{Error, Result};

/// How the rows of a `rows × width` matrix group into attention sequences.
/// Sequence `s` is split as `(outer, inner) = (s / inner_count, s % inner_count)`
/// and its `i`-th row is `outer·outer_stride + inner·inner_stride + i·step`.
///
/// This lets one attention op serve both MATB streams of a `B×T×L` token grid
/// without permuting memory: the spatial stream is `B·T` contiguous runs of
/// `L` rows, the depth stream is `B·L` runs of `T` rows spaced `L` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqLayout {
    pub outer_count: usize,
    pub inner_count: usize,
    pub outer_stride: usize,
    pub inner_stride: usize,
    pub len: usize,
    pub step: usize,
    /// Added to every row (the second of two interleaved streams).
    pub offset: usize,
}

impl SeqLayout {
    /// `count` sequences of `len` consecutive rows.
    pub fn contiguous(count: usize, len: usize) -> Self {
        SeqLayout {
            outer_count: count,
            inner_count: 1,
            outer_stride: len,
            inner_stride: 0,
            len,
            step: 1,
            offset: 0,
        }
    }

    /// The MATB spatial stream over a `batch × t × l` grid: one sequence per slice.
    pub fn spatial(batch: usize, t: usize, l: usize) -> Self {
        Self::contiguous(batch * t, l)
    }

    /// The MATB depth stream over a `batch × t × l` grid: for each item and
    /// in-slice position `l`, the `t` rows that share it.
    pub fn depth(batch: usize, t: usize, l: usize) -> Self {
        SeqLayout {
            outer_count: batch,
            inner_count: l,
            outer_stride: t * l,
            inner_stride: 1,
            len: t,
            step: l,
            offset: 0,
        }
    }

    /// This layout over a matrix whose rows are interleaved with those of
    /// `ways − 1` others: row r becomes row `r·ways + which`. Two streams'
    /// QKV rows side by side (`rows × 6E`) read as `2·rows × 3E` this way.
    pub fn interleaved(&self, ways: usize, which: usize) -> Self {
        SeqLayout {
            outer_stride: self.outer_stride * ways,
            inner_stride: self.inner_stride * ways,
            step: self.step * ways,
            offset: self.offset * ways + which,
            ..*self
        }
    }

    /// The highest row any sequence reaches (0 for an empty layout).
    pub fn last_row(&self) -> usize {
        if self.num_seqs() == 0 || self.len == 0 {
            return 0;
        }
        self.offset
            + (self.outer_count - 1) * self.outer_stride
            + (self.inner_count - 1) * self.inner_stride
            + (self.len - 1) * self.step
    }

    pub fn num_seqs(&self) -> usize {
        self.outer_count * self.inner_count
    }

    pub fn num_rows(&self) -> usize {
        self.num_seqs() * self.len
    }

    /// The row of element 0 of sequence `s`.
    pub fn base(&self, s: usize) -> usize {
        self.offset + (s / self.inner_count) * self.outer_stride + (s % self.inner_count) * self.inner_stride
    }

    pub fn row(&self, s: usize, i: usize) -> usize {
        self.base(s) + i * self.step
    }

    /// Checks that the sequences cover rows `0..rows` exactly once, so the
    /// output of an attention op is fully and unambiguously defined.
    pub fn validate(&self, rows: usize) -> Result<()> {
        let bad = |why: String| Err(Error::invalid("attention layout", why));
        if self.inner_count == 0 && self.outer_count > 0 {
            return bad("inner_count is 0".into());
        }
        if self.num_rows() != rows {
            return bad(format!(
                "{} sequences of {} rows cover {} rows, the input has {rows}",
                self.num_seqs(),
                self.len,
                self.num_rows()
            ));
        }
        let mut seen = vec![false; rows];
        for s in 0..self.num_seqs() {
            for i in 0..self.len {
                let r = self.row(s, i);
                match seen.get_mut(r) {
                    Some(hit) if !*hit => *hit = true,
                    Some(_) => return bad(format!("row {r} belongs to two sequences")),
                    None => {
                        return bad(format!(
                            "row {r} of sequence {s} is past the last row {}",
                            rows.saturating_sub(1)
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spatial_and_depth_cover_the_grid() {
        let (b, t, l) = (2, 3, 5);
        SeqLayout::spatial(b, t, l).validate(b * t * l).unwrap();
        let d = SeqLayout::depth(b, t, l);
        d.validate(b * t * l).unwrap();
        // Item 1, in-slice position 4: rows 1·15 + 4, + 5, + 10.
        let s = l + 4;
        assert_eq!((0..t).map(|i| d.row(s, i)).collect::<Vec<_>>(), vec![19, 24, 29]);
    }

    #[test]
    fn the_last_row_is_the_highest_any_sequence_reaches() {
        for l in [
            SeqLayout::spatial(2, 3, 5),
            SeqLayout::depth(2, 3, 5),
            SeqLayout::depth(2, 3, 5).interleaved(2, 1),
        ] {
            let max = (0..l.num_seqs())
                .flat_map(|s| (0..l.len).map(move |i| (s, i)))
                .map(|(s, i)| l.row(s, i))
                .max()
                .unwrap();
            assert_eq!(l.last_row(), max, "{l:?}");
        }
    }

    #[test]
    fn overlapping_layout_is_rejected() {
        let bad = SeqLayout {
            outer_count: 2,
            inner_count: 1,
            outer_stride: 1,
            inner_stride: 0,
            len: 2,
            step: 1,
            offset: 0,
        };
        let err = bad.validate(4).unwrap_err().to_string();
        assert!(
            err.contains("two sequences") || err.contains("past the last row"),
            "{err}"
        );
    }
}
