//! What a GPU of compute capability 9.0 (the H100 and H200 the engine is
//! built for) accepts in one launch. The emulator refuses whatever breaks
//! these rules, as the GPU would, and the CUDA device checks them before
//! the driver does, so a bad launch is named in our words.
//!
//! Registers come from the table NVRTC's ptxas report gives for sm_90
//! (kernels/registers.sm_90, kept current by tests/nvrtc.rs): a block needs
//! its warps' registers, allocated per warp in units of 256, within the 64K
//! a multiprocessor has.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::device::Launch;
use crate::error::{Error, Result};

pub const MAX_THREADS_PER_BLOCK: u64 = 1024;
pub const MAX_BLOCK: [u32; 3] = [1024, 1024, 64];
pub const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65_535, 65_535];
/// Dynamic shared memory a kernel may use without opting in.
pub const DEFAULT_SHARED: u32 = 48 * 1024;
/// The most a kernel may opt in to (227 KiB on sm_90).
pub const MAX_SHARED: u32 = 232_448;
pub const REGISTERS_PER_BLOCK: u64 = 65_536;

include!(concat!(env!("OUT_DIR"), "/registers.rs"));

/// Registers per thread of `kernel` on sm_90, when the table has it.
pub fn registers(kernel: &str) -> Option<u32> {
    REGISTERS_SM90.iter().find(|(k, _)| *k == kernel).map(|(_, r)| *r)
}

/// Registers a block of `threads` threads takes: whole warps, each warp's
/// share rounded up to the allocation unit of 256.
pub fn block_registers(per_thread: u32, threads: u64) -> u64 {
    let per_warp = (per_thread as u64 * 32).div_ceil(256) * 256;
    threads.div_ceil(32) * per_warp
}

/// Checks one launch of `kernel`; `opted_in` is the dynamic shared memory
/// the kernel has been allowed (at least `DEFAULT_SHARED`).
pub fn check(kernel: &str, cfg: &Launch, opted_in: u32) -> Result<()> {
    let bad = |why: String| Err(Error::invalid("launch", format!("`{kernel}`: {why}")));
    let threads: u64 = cfg.block.iter().map(|&b| b as u64).product();
    if threads == 0 || threads > MAX_THREADS_PER_BLOCK {
        return bad(format!("a block of {threads} threads (1 to {MAX_THREADS_PER_BLOCK})"));
    }
    for (axis, ((&b, &g), (&bmax, &gmax))) in cfg
        .block
        .iter()
        .zip(&cfg.grid)
        .zip(MAX_BLOCK.iter().zip(&MAX_GRID))
        .enumerate()
    {
        let name = ["x", "y", "z"][axis];
        if b > bmax {
            return bad(format!("block {name} of {b} (at most {bmax})"));
        }
        if g == 0 || g > gmax {
            return bad(format!("grid {name} of {g} blocks (1 to {gmax})"));
        }
    }
    if cfg.shared_bytes > MAX_SHARED {
        return bad(format!(
            "{} bytes of dynamic shared memory (at most {MAX_SHARED})",
            cfg.shared_bytes
        ));
    }
    if cfg.shared_bytes > opted_in.max(DEFAULT_SHARED) {
        return bad(format!(
            "{} bytes of dynamic shared memory without opting in (above {DEFAULT_SHARED} bytes a kernel must raise \
             its limit first; it is {})",
            cfg.shared_bytes,
            opted_in.max(DEFAULT_SHARED)
        ));
    }
    if let Some(r) = registers(kernel) {
        let need = block_registers(r, threads);
        if need > REGISTERS_PER_BLOCK {
            return bad(format!(
                "{threads} threads × {r} registers need {need} registers (a block has {REGISTERS_PER_BLOCK})"
            ));
        }
    }
    Ok(())
}

/// The dynamic shared memory each kernel has been allowed on one device.
/// Only ever raised: a graph node captured with a larger size may replay
/// after a later launch of the same kernel needed less, and lowering the
/// limit then would break the replay.
#[derive(Default)]
pub struct OptIns(Mutex<HashMap<String, u32>>);

impl OptIns {
    /// What `kernel` may use now.
    pub fn allowed(&self, kernel: &str) -> u32 {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(kernel).copied())
            .unwrap_or(0)
            .max(DEFAULT_SHARED)
    }

    /// Makes sure `kernel` may use `bytes`, calling `raise` (the device's
    /// opt-in) when that is more than it has been allowed.
    pub fn ensure(&self, kernel: &str, bytes: u32, raise: impl FnOnce(u32) -> Result<()>) -> Result<()> {
        if bytes <= DEFAULT_SHARED {
            return Ok(());
        }
        let mut m = self
            .0
            .lock()
            .map_err(|_| Error::invalid("launch", "the shared-memory table's lock is poisoned"))?;
        if m.get(kernel).is_some_and(|&have| have >= bytes) {
            return Ok(());
        }
        raise(bytes)?;
        m.insert(kernel.to_string(), bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(grid: [u32; 3], block: [u32; 3], shared: u32) -> Launch {
        Launch {
            grid,
            block,
            shared_bytes: shared,
        }
    }

    #[test]
    fn each_limit_is_enforced_at_its_edge() {
        let k = "no_such_kernel";
        assert!(check(k, &cfg([1, 1, 1], [1024, 1, 1], 0), 0).is_ok());
        assert!(check(k, &cfg([1, 1, 1], [1025, 1, 1], 0), 0).is_err());
        assert!(check(k, &cfg([1, 1, 1], [32, 32, 2], 0), 0).is_err());
        assert!(check(k, &cfg([1, 1, 1], [1, 1, 65], 0), 0).is_err());
        assert!(check(k, &cfg([1, 65_535, 65_535], [1, 1, 1], 0), 0).is_ok());
        assert!(check(k, &cfg([1, 65_536, 1], [1, 1, 1], 0), 0).is_err());
        assert!(check(k, &cfg([0, 1, 1], [1, 1, 1], 0), 0).is_err());
        assert!(check(k, &cfg([1, 1, 1], [32, 1, 1], DEFAULT_SHARED), 0).is_ok());
        let e = check(k, &cfg([1, 1, 1], [32, 1, 1], DEFAULT_SHARED + 4), 0).unwrap_err();
        assert!(e.to_string().contains("opting in"), "{e}");
        assert!(check(k, &cfg([1, 1, 1], [32, 1, 1], MAX_SHARED), MAX_SHARED).is_ok());
        assert!(check(k, &cfg([1, 1, 1], [32, 1, 1], MAX_SHARED + 4), MAX_SHARED + 4).is_err());
    }

    #[test]
    fn the_opt_in_is_raised_once_and_never_lowered() {
        let o = OptIns::default();
        let calls = std::cell::RefCell::new(Vec::new());
        let raise = |b: u32| {
            calls.borrow_mut().push(b);
            Ok(())
        };
        o.ensure("k", 1000, raise).unwrap();
        o.ensure("k", 60_000, raise).unwrap();
        o.ensure("k", 50_000, raise).unwrap();
        o.ensure("k", 60_000, raise).unwrap();
        o.ensure("k", 70_000, raise).unwrap();
        assert_eq!(*calls.borrow(), vec![60_000, 70_000]);
        assert_eq!(o.allowed("k"), 70_000);
        assert_eq!(o.allowed("other"), DEFAULT_SHARED);
    }

    #[test]
    fn registers_are_counted_per_warp_in_units_of_256() {
        assert_eq!(block_registers(64, 1024), 65_536);
        assert_eq!(
            block_registers(65, 1024),
            32 * (65 * 32usize).div_ceil(256) as u64 * 256
        );
        assert!(block_registers(65, 1024) > REGISTERS_PER_BLOCK);
        assert_eq!(block_registers(1, 1), 256);
    }
}
