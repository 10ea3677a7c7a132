//! Data-parallel semantics that hold without any collective: a rank's share
//! of a step draws its masks, noise and dropout by the global micro-batch,
//! so W ranks with accum A compute the micro-batches of one rank with
//! accum A × W (the loader's side is in tests/data_pipeline.rs). The ranks
//! themselves, joined by MPI, are in tests/mpi.rs; the launchers in
//! tests/launchers.rs.

use nemesis::data::{Batch, BatchData, Position};
use nemesis::dist::Shard;
use nemesis::model::{init_params, ModelConfig, Nemesis};
use nemesis::rng::RngStream;
use nemesis::tensor::DType;
use nemesis::train::{queue_step, AdamW, StepSpec, TrainConfig};

fn config() -> ModelConfig {
    let mut c = ModelConfig::tiny();
    c.dropout = 0.1;
    c
}

fn batch(c: &ModelConfig, k: u64) -> Batch {
    let mut u = vec![0.0f32; c.voxels()];
    RngStream::new(5, k).fill_uniform(0, &mut u);
    let [d, h, w] = c.superpatch_size;
    Batch {
        position: Position::default(),
        shape: [1, 1, d, h, w],
        data: BatchData::F32(u),
        sources: Vec::new(),
    }
}

/// The loss of step 3 over `batches`, as `shard` of the world.
fn loss(shard: Shard, batches: Vec<Batch>) -> f64 {
    let c = config();
    let model = Nemesis::new(c.clone()).unwrap();
    let mut store = init_params(&c, 1, DType::F32).unwrap();
    let mut opt = AdamW::new(TrainConfig::default().adamw(), &store);
    let spec = StepSpec {
        model: &model,
        seed: 11,
        noise_levels: &[0.0, 0.03, 0.05],
        clip: 1.0,
        shard,
        collective: None,
        allreduce_bf16: false,
    };
    queue_step(&spec, &mut store, &mut opt, 3, 1e-4, batches)
        .unwrap()
        .wait()
        .unwrap()
        .loss
}

#[test]
fn ranks_draw_what_one_rank_with_accum_times_world_draws() {
    let c = config();
    // One rank, accum 2: micro-batches 0 and 1.
    let one = loss(Shard::default(), vec![batch(&c, 0), batch(&c, 1)]);
    // Two ranks, accum 1: rank r takes global micro-batch r.
    let r0 = loss(Shard { rank: 0, world: 2 }, vec![batch(&c, 0)]);
    let r1 = loss(Shard { rank: 1, world: 2 }, vec![batch(&c, 1)]);
    assert_eq!((r0 + r1) / 2.0, one, "ranks {r0}, {r1}; one rank {one}");
    // The draws are what makes them agree: rank 1's batch drawn as a
    // one-rank step's first micro-batch gives another loss.
    let unkeyed = loss(Shard::default(), vec![batch(&c, 1)]);
    assert_ne!(unkeyed, r1);
}

/// What a data-parallel rank's backward pass hands its gradient buckets:
/// every parameter once, each when its gradient is already what it will be
/// at the end, and the gradients those of a plain backward, bit for bit.
#[test]
fn each_gradient_is_handed_on_once_complete() {
    use nemesis::autograd::Tape;
    use nemesis::model::DualMask;
    let c = config();
    let model = Nemesis::new(c.clone()).unwrap();
    let b = batch(&c, 3);
    let clean = nemesis::tensor::Tensor::from_vec(
        match b.data {
            BatchData::F32(v) => v,
            _ => unreachable!(),
        },
        b.shape.to_vec(),
    )
    .unwrap();
    let grads = |each: bool| {
        let mut store = init_params(&c, 1, DType::F32).unwrap();
        let tape = Tape::new();
        let mask = DualMask::sample(&c, 1, RngStream::new(2, 3));
        let out = model.forward_train(&tape, &store, &clean, &clean, &mask, None).unwrap();
        let mut seen: Vec<(usize, Vec<f32>)> = Vec::new();
        if each {
            let ids: Vec<_> = store.iter().map(|(id, _)| id).collect();
            tape.backward_each(&out.loss, &mut store, &mut |id, s| {
                let i = ids.iter().position(|&x| x == id).unwrap();
                let g = s
                    .get(id)
                    .grad
                    .as_ref()
                    .map(|g| g.to_vec::<f32>().unwrap())
                    .unwrap_or_default();
                seen.push((i, g));
                Ok(())
            })
            .unwrap();
        } else {
            tape.backward(&out.loss, &mut store).unwrap();
        }
        let finals: Vec<Vec<f32>> = store
            .iter()
            .map(|(_, p)| p.grad.as_ref().map(|g| g.to_vec::<f32>().unwrap()).unwrap_or_default())
            .collect();
        (finals, seen)
    };
    let (plain, _) = grads(false);
    let (finals, seen) = grads(true);
    assert_eq!(finals, plain);
    let mut order: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
    assert_eq!(order.len(), plain.len(), "every parameter handed on once");
    // Handed on as the backward finishes them: the later layers first.
    assert!(order.first() > order.last(), "{order:?}");
    order.sort_unstable();
    order.dedup();
    assert_eq!(order.len(), plain.len());
    for (i, g) in &seen {
        assert_eq!(
            g, &plain[*i],
            "parameter {i} was handed on before its gradient was complete"
        );
    }
}
