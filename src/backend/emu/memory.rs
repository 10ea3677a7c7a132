//! The emulator's device memory: host blocks with a guard zone on each
//! side, filled with a pattern and checked after every launch and GEMM, so
//! a kernel that writes past either end of a buffer is named (a GPU would
//! corrupt a neighbour in silence, or fault later). A read past the end
//! finds the pattern, a NaN as f32.

/// Guard bytes on each side of a buffer (a multiple of 16, so the data
/// keeps the 16-byte alignment of the block).
const GUARD_BYTES: usize = 64;
const GUARD_WORDS: usize = GUARD_BYTES / 16;
/// The guard pattern, a 32-bit NaN that no kernel computes.
const GUARD: u32 = 0x7FBA_DBAD;

fn guard_byte(at: usize) -> u8 {
    GUARD.to_le_bytes()[at % 4]
}

/// How a fresh block's data starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// All ones bits (NaN as f32), so a value a kernel fails to write shows.
    Poison,
    /// Zeros, mapped lazily by the allocator (the paper-size dry run, which
    /// allocates gigabytes it never fills).
    Lazy,
}

/// One device allocation.
pub struct Block {
    words: Vec<u128>,
    bytes: usize,
}

impl Block {
    /// A block of `bytes`, or `None` when the host cannot give that much
    /// (a device would say it is out of memory; never an abort).
    pub fn new(bytes: usize, fill: Fill) -> Option<Self> {
        let total = bytes.checked_add(15)? / 16 + GUARD_WORDS * 2;
        let words = match fill {
            Fill::Poison => {
                let mut w: Vec<u128> = Vec::new();
                w.try_reserve_exact(total).ok()?;
                w.resize(total, u128::MAX);
                w
            }
            // Zeroed by the allocator, page by page as it is touched.
            Fill::Lazy => {
                let layout = std::alloc::Layout::array::<u128>(total).ok()?;
                if layout.size() == 0 {
                    Vec::new()
                } else {
                    // SAFETY: the layout is non-zero and is a u128 array's;
                    // zeroed bytes are valid u128s; the Vec takes ownership
                    // with the same layout (capacity = length = total).
                    unsafe {
                        let p = std::alloc::alloc_zeroed(layout) as *mut u128;
                        if p.is_null() {
                            return None;
                        }
                        Vec::from_raw_parts(p, total, total)
                    }
                }
            }
        };
        let mut b = Block { words, bytes };
        b.repair();
        Some(b)
    }

    /// Writes the guard zones afresh (once damage has been reported, so
    /// later launches are not blamed for it).
    pub fn repair(&mut self) {
        let data_end = GUARD_BYTES + self.bytes;
        let raw = bytemuck::cast_slice_mut::<u128, u8>(&mut self.words);
        for (i, b) in raw[..GUARD_BYTES].iter_mut().enumerate() {
            *b = guard_byte(i);
        }
        for (i, b) in raw[data_end..].iter_mut().enumerate() {
            *b = guard_byte(i);
        }
    }

    /// Bytes asked for.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The data, 16-byte aligned, padded to whole 16-byte words (the
    /// padding is guard).
    pub fn words(&self) -> &[u128] {
        &self.words[GUARD_WORDS..self.words.len() - GUARD_WORDS]
    }

    pub fn words_mut(&mut self) -> &mut [u128] {
        let n = self.words.len();
        &mut self.words[GUARD_WORDS..n - GUARD_WORDS]
    }

    /// The data as bytes.
    pub fn data(&self) -> &[u8] {
        &bytemuck::cast_slice::<u128, u8>(self.words())[..self.bytes]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        let n = self.bytes;
        &mut bytemuck::cast_slice_mut::<u128, u8>(self.words_mut())[..n]
    }

    /// The address a kernel receives.
    pub fn ptr(&mut self) -> *mut u8 {
        self.words_mut().as_mut_ptr().cast()
    }

    /// Where a guard byte was overwritten, as an offset from the first
    /// data byte (negative: before it), if one was.
    pub fn damage(&self) -> Option<isize> {
        let raw = bytemuck::cast_slice::<u128, u8>(&self.words);
        if let Some(i) = raw[..GUARD_BYTES]
            .iter()
            .enumerate()
            .position(|(i, &b)| b != guard_byte(i))
        {
            return Some(i as isize - GUARD_BYTES as isize);
        }
        let end = GUARD_BYTES + self.bytes;
        raw[end..]
            .iter()
            .enumerate()
            .position(|(i, &b)| b != guard_byte(i))
            .map(|i| (self.bytes + i) as isize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_past_either_end_is_found_and_located() {
        for fill in [Fill::Poison, Fill::Lazy] {
            let mut b = Block::new(10, fill).unwrap();
            assert_eq!(b.damage(), None);
            b.data_mut().fill(0);
            assert_eq!(b.damage(), None);
            // One byte past the end, inside the last word's padding.
            unsafe { *b.ptr().add(10) = 0 };
            assert_eq!(b.damage(), Some(10));
            let mut b = Block::new(16, fill).unwrap();
            unsafe { *b.ptr().sub(3) = 1 };
            assert_eq!(b.damage(), Some(-3));
        }
        assert_eq!(Block::new(8, Fill::Poison).unwrap().data(), &[0xFF; 8]);
        assert_eq!(Block::new(8, Fill::Lazy).unwrap().data(), &[0; 8]);
        // More than any host has: refused, not an abort.
        assert!(Block::new(usize::MAX / 2, Fill::Poison).is_none());
        assert!(Block::new(usize::MAX - 3, Fill::Lazy).is_none());
    }
}
