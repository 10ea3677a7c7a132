//! Steps replayed from a recorded graph (backend/graph.rs) on the emulator:
//! bit for bit the steps run one call at a time, with every per-step value
//! (random streams, learning rate, batches, token lists) changing.

use std::sync::Arc;

use nemesis::autograd::ParamStore;
use nemesis::backend::emu::EmuDevice;
use nemesis::data::{Batch, BatchData, Position};
use nemesis::device::SharedDevice;
use nemesis::model::{init_params, ModelConfig, Nemesis};
use nemesis::rng::RngStream;
use nemesis::tensor::DType;
use nemesis::train::{AdamW, StepGraphs, StepSpec, StepValues, TrainConfig};

fn config() -> ModelConfig {
    let mut c = ModelConfig::tiny();
    // Dropout on, so every step's random streams differ.
    c.dropout = 0.1;
    c
}

/// A batch of raw HU crops, different for every `k`.
fn batch(c: &ModelConfig, b: usize, k: u64) -> Batch {
    let mut u = vec![0.0f32; b * c.voxels()];
    RngStream::new(3, k).fill_uniform(0, &mut u);
    let [d, h, w] = c.superpatch_size;
    Batch {
        position: Position::default(),
        shape: [b, 1, d, h, w],
        data: BatchData::HuI16(u.iter().map(|&v| (-400.0 + 900.0 * v).round() as i16).collect()),
        sources: Vec::new(),
    }
}

fn optimizer(store: &ParamStore) -> AdamW {
    AdamW::new(TrainConfig::default().adamw(), store)
}

struct Run {
    values: Vec<StepValues>,
    weights: Vec<Vec<f32>>,
    replays: u64,
    warning: Option<String>,
    /// Times the host waited for the device while the steps were queued.
    waits: u64,
    counts: Option<nemesis::device::GraphCounts>,
}

/// `steps` steps of `accum` micro-batches of one superpatch, with a
/// learning rate that changes every step. (The emulator takes seconds a
/// step, so the shapes are the smallest.)
fn run(emu: Arc<EmuDevice>, graphs: bool, steps: u64, accum: u64) -> Run {
    let c = config();
    let dev: SharedDevice = emu.clone();
    let mut store = init_params(&c, 1, DType::F32).unwrap().to_device(&dev).unwrap();
    let model = Nemesis::new(c.clone()).unwrap();
    let spec = StepSpec {
        model: &model,
        seed: 9,
        noise_levels: &[0.0, 0.05, 0.1],
        clip: 0.5,
        shard: Default::default(),
        collective: None,
        allreduce_bf16: false,
    };
    let mut opt = optimizer(&store);
    let mut g = StepGraphs::new(graphs);
    let mut pending = Vec::new();
    let before = emu.host_waits();
    for s in 0..steps {
        let lr = 1e-3 * (1.0 + s as f64) / steps as f64;
        let batches = (0..accum).map(|m| batch(&c, 1, accum * s + m)).collect();
        pending.push(g.queue(&spec, &mut store, &mut opt, s, lr, batches).unwrap());
    }
    let waits = emu.host_waits() - before;
    let values = pending.into_iter().map(|p| p.wait().unwrap()).collect();
    let weights = store
        .to_cpu()
        .unwrap()
        .iter()
        .map(|(_, p)| p.value.to_vec::<f32>().unwrap())
        .collect();
    Run {
        values,
        weights,
        replays: g.replays(),
        warning: g.warning.clone(),
        waits,
        counts: g.counts(),
    }
}

fn same_runs(mixed: bool, accum: u64) {
    let make = || Arc::new(if mixed { EmuDevice::mixed() } else { EmuDevice::new() });
    let plain = run(make(), false, 4, accum);
    let graphed = run(make(), true, 4, accum);
    assert_eq!(graphed.warning, None);
    // Step 1 runs as usual, step 2 is recorded, steps 3 and 4 are replays.
    assert_eq!(graphed.replays, 2);
    assert_eq!(plain.replays, 0);
    assert_eq!(graphed.waits, 0, "a step made the host wait for the device");
    let counts = graphed.counts.expect("a graph was recorded");
    assert!(counts.launches > 50 && counts.gemms > 20, "{counts:?}");
    for (k, (a, b)) in plain.values.iter().zip(&graphed.values).enumerate() {
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}: loss", k + 1);
        assert_eq!(a.psnr.to_bits(), b.psnr.to_bits(), "step {}: PSNR", k + 1);
        assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits(), "step {}: norm", k + 1);
    }
    // The steps differ from each other (so a replay that froze a batch, a
    // random stream or the learning rate would show).
    assert!(plain.values.windows(2).all(|w| w[0].loss != w[1].loss));
    assert_eq!(plain.weights, graphed.weights, "the weights after four steps differ");
}

#[test]
fn replayed_steps_equal_plain_steps_bit_for_bit() {
    // Two micro-batches a step: two noise levels, two masks, two uploads.
    same_runs(false, 2);
}

#[test]
fn replayed_steps_equal_plain_steps_in_mixed_precision() {
    same_runs(true, 1);
}

#[test]
fn a_step_that_does_not_match_the_graph_is_refused_and_the_device_stays_usable() {
    let c = config();
    let dev: SharedDevice = Arc::new(EmuDevice::new());
    let mut store = init_params(&c, 1, DType::F32).unwrap().to_device(&dev).unwrap();
    let model = Nemesis::new(c.clone()).unwrap();
    let spec = StepSpec {
        model: &model,
        seed: 9,
        noise_levels: &[0.05],
        clip: 1.0,
        shard: Default::default(),
        collective: None,
        allreduce_bf16: false,
    };
    let mut opt = optimizer(&store);
    let mut g = StepGraphs::new(true);
    for s in 0..3 {
        g.queue(&spec, &mut store, &mut opt, s, 1e-3, vec![batch(&c, 1, s)])
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(g.replays(), 1);
    // Two micro-batches where the graph was recorded with one: the step
    // makes more device calls than were recorded.
    let two = vec![batch(&c, 1, 3), batch(&c, 1, 4)];
    let e = match g.queue(&spec, &mut store, &mut opt, 3, 1e-3, two) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a step of another shape was replayed"),
    };
    assert!(e.contains("cannot be replayed"), "{e}");
    // The device is out of the replay: a plain step runs.
    store.zero_grad();
    let mut plain = StepGraphs::new(false);
    let v = plain
        .queue(&spec, &mut store, &mut opt, 4, 1e-3, vec![batch(&c, 1, 5)])
        .unwrap()
        .wait()
        .unwrap();
    assert!(v.loss.is_finite());
}

/// The rows `nemesis check` shows for step graphs (limit 0: replayed steps
/// equal plain ones bit for bit), in both precisions.
#[test]
fn the_check_rows_for_step_graphs_pass_on_the_emulator() {
    for dev in [Arc::new(EmuDevice::new()), Arc::new(EmuDevice::mixed())] {
        let dev: SharedDevice = dev;
        let rows = nemesis::check::step_graphs(&dev, 1, 7).unwrap();
        assert!(rows.len() >= 2, "{} rows", rows.len());
        for r in &rows {
            assert!(r.ok() && r.limit == 0.0, "{} {}: {:e}", r.kernel, r.case, r.rel_err);
        }
    }
}
