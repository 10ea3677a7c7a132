//! The `paper` preset at batch 4, the size a GPU trains, driven through the
//! whole device path without a GPU: the emulator in dry-run mode runs the
//! blocks at each launch's grid corners (where the largest indices are) on
//! lazily zeroed, guard-zoned buffers, and checks every GEMM's sizes
//! without computing it. A step that gets through has shown, at paper size:
//! every `int` argument converted without wrapping (`gpu::i32a` refuses
//! one that does not fit), every sequence layout's last row inside its QKV
//! matrix and within 32-bit rows, every launch within sm_90's limits with
//! its shared memory opted in, every GEMM's operands within their buffers,
//! and no corner block writing outside a buffer. Step graphs are recorded
//! and captured too (the capture's rules checked), and replayed.

use std::sync::Arc;

use nemesis::backend::emu::EmuDevice;
use nemesis::data::{Batch, BatchData, Position};
use nemesis::device::SharedDevice;
use nemesis::model::{estimate, init_params, ModelConfig, Nemesis, Pass, Place};
use nemesis::tensor::DType;
use nemesis::train::{AdamW, StepGraphs, StepSpec, TrainConfig};

fn dry_run(bf16: bool) {
    let c = ModelConfig::paper();
    let batch = 4;
    let emu = Arc::new(EmuDevice::dry_run(bf16));
    let dev: SharedDevice = emu.clone();
    let mut store = init_params(&c, 1, DType::F32).unwrap().to_device(&dev).unwrap();
    let model = Nemesis::new(c.clone()).unwrap();
    let spec = StepSpec {
        model: &model,
        seed: 42,
        noise_levels: &[0.0, 0.01, 0.03, 0.05],
        clip: 1.0,
        shard: Default::default(),
        collective: None,
        allreduce_bf16: false,
    };
    let mut opt = AdamW::new(TrainConfig::default().adamw(), &store);
    let mut graphs = StepGraphs::new(true);
    let [d, h, w] = c.superpatch_size;
    // Step 1 runs call by call, step 2 is recorded and captured, step 3
    // replays the graph.
    for s in 0..3u64 {
        let hu: Vec<i16> = (0..batch * d * h * w).map(|i| (i % 1024) as i16 - 512).collect();
        let b = Batch {
            position: Position::default(),
            shape: [batch, 1, d, h, w],
            data: BatchData::HuI16(hu),
            sources: Vec::new(),
        };
        let pending = graphs
            .queue(&spec, &mut store, &mut opt, s, 1e-4, vec![b])
            .unwrap_or_else(|e| panic!("paper step {} (bf16 {bf16}): {e}", s + 1));
        pending.wait().unwrap();
    }
    assert_eq!(graphs.warning, None, "the step graph fell back");
    assert_eq!(graphs.replays(), 1);
    let st = emu.stats();
    let peak = dev.memory().peak as f64;
    eprintln!("paper, batch {batch}, bf16 {bf16}: {st:?}, device memory peak {peak}");
    // The memory estimate commands refuse by stays near what the device
    // really allocated: above it, and not by so much that it refuses a
    // batch that fits.
    let est = estimate(&c, batch, Pass::Train, Place::Device).unwrap().total() as f64;
    let ratio = est / peak;
    eprintln!("estimate {est}, ratio {ratio}");
    assert!((1.0..1.6).contains(&ratio), "estimate {est} vs device peak {peak}");
    // The sizes really were the paper's: 4 × 4096 tokens, 768 wide.
    assert!(st.largest_int >= 4096, "{st:?}");
    assert!(st.largest_alloc >= batch * 4096 * 1024 * 2, "{st:?}");
    assert!(st.launches > 1000 && st.gemms > 100, "{st:?}");
}

#[test]
fn a_paper_step_at_batch_4_keeps_every_rule_in_fp32() {
    dry_run(false);
}

#[test]
fn a_paper_step_at_batch_4_keeps_every_rule_in_mixed_precision() {
    dry_run(true);
}
