//! The tensor-core fragment layout the emulator assumes (kernels/emu/emu.h)
//! and the flash kernels pack (kernels/flash.cu), checked against tables
//! transcribed here from the PTX ISA's description of
//! `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`, with small
//! integers so every product is exact. `nemesis check` runs the same
//! probes on a GPU's tensor cores.

use nemesis::backend::emu::EmuDevice;
use nemesis::device::{Arg, DeviceApi, DeviceVec, Launch};

/// In every table a lane is (groupID, threadID_in_group) = (lane / 4, lane % 4).
fn group(lane: usize) -> (usize, usize) {
    (lane / 4, lane % 4)
}

/// A (16 × 16): element i of a lane's eight bf16 values (two per 32-bit
/// register, the lower half first). The PTX ISA: row groupID for a0, a1,
/// a4, a5 and groupID + 8 for a2, a3, a6, a7; column threadID_in_group·2 +
/// (i & 1), plus 8 for i ≥ 4. As (row offset, column offset) added to
/// (groupID, threadID_in_group·2):
const A_TABLE: [(usize, usize); 8] = [(0, 0), (0, 1), (8, 0), (8, 1), (0, 8), (0, 9), (8, 8), (8, 9)];

/// B (16 × 8): element i of four. Row threadID_in_group·2 + (i & 1), plus
/// 8 for i ≥ 2; column groupID. As the row offset added to
/// threadID_in_group·2:
const B_TABLE: [usize; 4] = [0, 1, 8, 9];

/// C, D (16 × 8, f32): element i of four. Row groupID for c0, c1 and
/// groupID + 8 for c2, c3; column threadID_in_group·2 + (i & 1). As
/// (row offset, column offset) added to (groupID, threadID_in_group·2):
const C_TABLE: [(usize, usize); 4] = [(0, 0), (0, 1), (8, 0), (8, 1)];

fn a_at(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (g + A_TABLE[i].0, 2 * t + A_TABLE[i].1)
}

fn b_at(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (2 * t + B_TABLE[i], g)
}

fn c_at(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (g + C_TABLE[i].0, 2 * t + C_TABLE[i].1)
}

/// Small integers in `-r..=r`, exact in bf16, from a fixed sequence.
fn ints(n: usize, seed: u64, r: i64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s % (2 * r as u64 + 1)) as i64 - r) as f32
        })
        .collect()
}

fn bf16(v: f32) -> u32 {
    half::bf16::from_f32(v).to_bits() as u32
}

fn product(a: &[f32], b: &[f32], rows: usize, inner: usize, cols: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            c[i * cols + j] = (0..inner).map(|k| a[i * inner + k] * b[k * cols + j]).sum();
        }
    }
    c
}

fn transpose(x: &[f32], n: usize) -> Vec<f32> {
    (0..n * n).map(|i| x[(i % n) * n + i / n]).collect()
}

#[test]
fn the_tables_say_what_the_ptx_isa_figures_show() {
    // Spot checks read off the figures: lane 5 is (groupID 1, thread 1).
    assert_eq!(a_at(5, 0), (1, 2));
    assert_eq!(a_at(5, 3), (9, 3));
    assert_eq!(a_at(5, 6), (9, 10));
    assert_eq!(b_at(5, 1), (3, 1));
    assert_eq!(b_at(5, 2), (10, 1));
    assert_eq!(c_at(5, 2), (9, 2));
    // Every element of each matrix is held by exactly one (lane, slot).
    let mut seen_a = vec![0; 256];
    let mut seen_b = vec![0; 128];
    let mut seen_c = vec![0; 128];
    for lane in 0..32 {
        (0..8).for_each(|i| seen_a[a_at(lane, i).0 * 16 + a_at(lane, i).1] += 1);
        (0..4).for_each(|i| seen_b[b_at(lane, i).0 * 8 + b_at(lane, i).1] += 1);
        (0..4).for_each(|i| seen_c[c_at(lane, i).0 * 8 + c_at(lane, i).1] += 1);
    }
    assert!(seen_a.iter().chain(&seen_b).chain(&seen_c).all(|&n| n == 1));
}

/// Fragments packed by the tables, multiplied by the emulated mma.sync,
/// come back as the plain product laid out by the C table.
#[test]
fn the_emulated_mma_follows_the_ptx_fragment_tables() {
    let emu = EmuDevice::new();
    for seed in 1..4 {
        let a = ints(16 * 16, seed, 3);
        let b = ints(16 * 8, seed + 100, 3);
        let mut ar = vec![0u32; 32 * 4];
        let mut br = vec![0u32; 32 * 2];
        for lane in 0..32 {
            for r in 0..4 {
                let (lo, hi) = (a_at(lane, 2 * r), a_at(lane, 2 * r + 1));
                ar[4 * lane + r] = bf16(a[lo.0 * 16 + lo.1]) | bf16(a[hi.0 * 16 + hi.1]) << 16;
            }
            for r in 0..2 {
                let (lo, hi) = (b_at(lane, 2 * r), b_at(lane, 2 * r + 1));
                br[2 * lane + r] = bf16(b[lo.0 * 8 + lo.1]) | bf16(b[hi.0 * 8 + hi.1]) << 16;
            }
        }
        let (da, db) = (
            DeviceVec::from_slice(&emu, &ar).unwrap(),
            DeviceVec::from_slice(&emu, &br).unwrap(),
        );
        let c = DeviceVec::poisoned_f32(&emu, 32 * 4).unwrap();
        emu.launch(
            "mma_fragment_probe",
            &Launch::linear(1, 32, 0),
            &[da.arg(), db.arg(), c.arg()],
        )
        .unwrap();
        let got = c.to_vec::<f32>().unwrap();
        let want = product(&a, &b, 16, 16, 8);
        for lane in 0..32 {
            for i in 0..4 {
                let (row, col) = c_at(lane, i);
                assert_eq!(got[4 * lane + i], want[row * 8 + col], "lane {lane} c{i}");
            }
        }
    }
}

/// The flash kernels' three products (Q·Kᵀ, P·V, and the dK/dV path that
/// writes transposed scores back as a tile before multiplying by dO), with
/// the kernels' own packing, in f32 and on the emulated tensor cores.
#[test]
fn the_flash_kernels_pack_their_three_products_by_the_tables() {
    let emu = EmuDevice::new();
    let (x, y) = (ints(256, 7, 2), ints(256, 8, 2));
    let xyt = product(&x, &transpose(&y, 16), 16, 16, 16);
    let wants = [xyt.clone(), product(&x, &y, 16, 16, 16), product(&xyt, &y, 16, 16, 16)];
    for kernel in ["flash_mma_probe_f32", "flash_mma_probe_bf16"] {
        for (usage, want) in wants.iter().enumerate() {
            let (dx, dy) = (
                DeviceVec::from_slice(&emu, &x).unwrap(),
                DeviceVec::from_slice(&emu, &y).unwrap(),
            );
            let c = DeviceVec::poisoned_f32(&emu, 32 * 8).unwrap();
            emu.launch(
                kernel,
                &Launch::linear(1, 32, 3 * 256 * 4),
                &[dx.arg(), dy.arg(), c.arg(), Arg::I32(usage as i32)],
            )
            .unwrap();
            let got = c.to_vec::<f32>().unwrap();
            for lane in 0..32 {
                for n in 0..2 {
                    for i in 0..4 {
                        let (row, col) = c_at(lane, i);
                        assert_eq!(
                            got[8 * lane + 4 * n + i],
                            want[row * 16 + n * 8 + col],
                            "{kernel} usage {usage} lane {lane} tile {n} c{i}"
                        );
                    }
                }
            }
        }
    }
}
