//! f64 finite-difference gradient checks for every op of the CPU reference
//! (relative error ≤ 1e-6), on seeded random shapes that include odd sizes.

mod common;

use common::{gradcheck, rand_size, rand_tensor};
use nemesis::ops::{AttentionOptions, AttnDropout, MhaParams};
use nemesis::rng::RngStream;
use nemesis::tensor::SeqLayout;
use nemesis::{DType, Tensor};

const F64: DType = DType::F64;

fn t(shape: &[usize], seed: u64) -> Tensor {
    rand_tensor(shape.to_vec(), seed, F64)
}

#[test]
fn linear_with_and_without_bias() {
    for (k, (rows, inf, outf)) in [
        (1, 1, 1),
        (7, 5, 3),
        (rand_size(2, 9, 1), rand_size(3, 17, 2), rand_size(1, 13, 3)),
    ]
    .into_iter()
    .enumerate()
    {
        let s = 10 * k as u64;
        gradcheck(
            "linear+b",
            &[t(&[2, rows, inf], s), t(&[outf, inf], s + 1), t(&[outf], s + 2)],
            |tp, v| tp.linear(&v[0], &v[1], Some(&v[2])),
        );
        gradcheck("linear", &[t(&[rows, inf], s + 3), t(&[outf, inf], s + 4)], |tp, v| {
            tp.linear(&v[0], &v[1], None)
        });
    }
}

#[test]
fn batched_matmul() {
    gradcheck("matmul 3-d", &[t(&[3, 5, 4], 1), t(&[3, 4, 7], 2)], |tp, v| {
        tp.matmul(&v[0], &v[1])
    });
    gradcheck("matmul 2-d", &[t(&[1, 9], 3), t(&[9, 2], 4)], |tp, v| {
        tp.matmul(&v[0], &v[1])
    });
    gradcheck("matmul 4-d", &[t(&[2, 3, 3, 5], 5), t(&[2, 3, 5, 1], 6)], |tp, v| {
        tp.matmul(&v[0], &v[1])
    });
}

#[test]
fn add_mul_scale_with_broadcast() {
    let a = t(&[2, 3, 5], 1);
    for b in [t(&[2, 3, 5], 2), t(&[3, 5], 3), t(&[5], 4), t(&[], 5)] {
        gradcheck("add", &[a.clone(), b.clone()], |tp, v| tp.add(&v[0], &v[1]));
        gradcheck("mul", &[a.clone(), b.clone()], |tp, v| tp.mul(&v[0], &v[1]));
    }
    gradcheck("scale", std::slice::from_ref(&a), |tp, v| tp.scale(&v[0], -0.37));
    gradcheck("reshape", &[a], |tp, v| {
        let r = tp.reshape(&v[0], [6, 5])?;
        tp.mul(&r, &r)
    });
}

#[test]
fn layer_norm() {
    for (k, cols) in [1usize, 2, 7, 12, rand_size(3, 40, 9)].into_iter().enumerate() {
        let s = 100 + 10 * k as u64;
        // An affine weight away from 1 and a spread-out input, so every term matters.
        let w = Tensor::from_f64_slice(
            &t(&[cols], s + 1)
                .to_f64_vec()
                .unwrap()
                .iter()
                .map(|v| 1.0 + v)
                .collect::<Vec<_>>(),
            [cols],
            F64,
        )
        .unwrap();
        gradcheck("layer_norm", &[t(&[3, 5, cols], s), w, t(&[cols], s + 2)], |tp, v| {
            tp.layer_norm(&v[0], &v[1], &v[2], 1e-5)
        });
    }
}

#[test]
fn gelu_sigmoid_softmax() {
    let x = Tensor::from_f64_slice(
        &t(&[4, 7], 7)
            .to_f64_vec()
            .unwrap()
            .iter()
            .map(|v| 3.0 * v)
            .collect::<Vec<_>>(),
        [4, 7],
        F64,
    )
    .unwrap();
    gradcheck("gelu", std::slice::from_ref(&x), |tp, v| tp.gelu(&v[0]));
    gradcheck("sigmoid", std::slice::from_ref(&x), |tp, v| tp.sigmoid(&v[0]));
    gradcheck("softmax", &[x], |tp, v| tp.softmax(&v[0]));
    gradcheck("softmax width 1", &[t(&[3, 1], 8)], |tp, v| {
        let s = tp.softmax(&v[0])?;
        tp.mul(&s, &v[0])
    });
}

#[test]
fn gate_mix() {
    for shape in [vec![3, 5], vec![2, 7, 4]] {
        gradcheck("gate_mix", &[t(&shape, 1), t(&shape, 2), t(&[], 3)], |tp, v| {
            let a = tp.sigmoid(&v[2])?;
            tp.gate_mix(&v[0], &v[1], &a)
        });
    }
}

#[test]
fn mean_over_each_axis() {
    for axis in 0..3 {
        gradcheck("mean", &[t(&[3, 5, 2], 4 + axis as u64)], |tp, v| tp.mean(&v[0], axis));
    }
}

#[test]
fn gather_and_scatter_rows() {
    // Two items, 7 rows of width 5; item 0 takes a row twice.
    let x = t(&[2, 7, 5], 1);
    let idx = [6, 0, 0, 3, 1, 2, 5, 4];
    gradcheck("gather_rows", &[x], |tp, v| tp.gather_rows(&v[0], &idx));
    let rows = t(&[2, 3, 5], 2);
    let fill = t(&[5], 3);
    let sidx = [4, 0, 2, 6, 1, 3];
    gradcheck("scatter_rows", &[rows, fill], |tp, v| {
        tp.scatter_rows(&v[0], &sidx, 7, &v[1])
    });
}

#[test]
fn masked_mse() {
    let (b, n, p) = (2, 5, 3);
    let mask_some = Tensor::from_f64_slice(&[1., 0., 1., 1., 0., 0., 0., 1., 0., 1.], [b, n], F64).unwrap();
    let mask_none = Tensor::zeros([b, n], F64);
    for mask in [mask_some, mask_none] {
        gradcheck("masked_mse", &[t(&[b, n, p], 1), t(&[b, n, p], 2)], |tp, v| {
            tp.masked_mse(&v[0], &v[1], &mask)
        });
    }
}

#[test]
fn dropout() {
    let rng = RngStream::new(3, 9);
    gradcheck("dropout", &[t(&[4, 9], 5)], |tp, v| tp.dropout(&v[0], 0.3, rng));
}

fn attention_case(name: &str, layout: SeqLayout, heads: usize, dh: usize, dropout: Option<f64>, seed: u64) {
    let e = heads * dh;
    let rows = layout.num_rows();
    let opts = AttentionOptions {
        layout,
        heads,
        dropout: dropout.map(|p| AttnDropout {
            p,
            rng: RngStream::new(seed, 77),
        }),
    };
    // Spread the logits so the softmax is far from uniform.
    let qkv = Tensor::from_f64_slice(
        &t(&[rows, 3 * e], seed)
            .to_f64_vec()
            .unwrap()
            .iter()
            .map(|v| 2.0 * v)
            .collect::<Vec<_>>(),
        [rows, 3 * e],
        F64,
    )
    .unwrap();
    gradcheck(name, &[qkv], |tp, v| tp.attention(&v[0], &opts));
}

#[test]
fn attention_spatial_and_depth_streams() {
    // Batch 2, T = 3 slices, L = 5 tokens per slice.
    let (b, tt, l) = (2, 3, 5);
    attention_case("spatial dh 4", SeqLayout::spatial(b, tt, l), 2, 4, None, 1);
    attention_case("depth dh 4", SeqLayout::depth(b, tt, l), 2, 4, None, 2);
    attention_case("spatial dh 12", SeqLayout::spatial(1, tt, l), 2, 12, None, 3);
    attention_case("depth dh 12", SeqLayout::depth(1, tt, l), 3, 12, None, 4);
    attention_case("depth dh 96", SeqLayout::depth(1, 2, 3), 1, 96, None, 5);
    attention_case("spatial dh 96", SeqLayout::spatial(1, 2, 3), 2, 96, None, 6);
    attention_case("length 1", SeqLayout::contiguous(3, 1), 2, 3, None, 7);
    let odd_l = rand_size(3, 9, 11) | 1;
    attention_case("odd length", SeqLayout::contiguous(2, odd_l), 1, 5, None, 8);
}

#[test]
fn attention_with_dropout() {
    attention_case("spatial dropout", SeqLayout::spatial(1, 2, 6), 2, 4, Some(0.25), 9);
    attention_case("depth dropout dh 12", SeqLayout::depth(1, 4, 3), 1, 12, Some(0.4), 10);
}

#[test]
fn composed_graph_reuses_values() {
    // A value used twice and a small MHA block: the tape must add both paths.
    let (rows, e) = (6, 8);
    gradcheck(
        "composed",
        &[
            t(&[rows, e], 1),
            t(&[3 * e, e], 2),
            t(&[3 * e], 3),
            t(&[e, e], 4),
            t(&[e], 5),
        ],
        |tp, v| {
            let ones = tp.constant(Tensor::full(1.0, [e], F64));
            let zeros = tp.constant(Tensor::zeros([e], F64));
            let h = tp.layer_norm(&v[0], &ones, &zeros, 1e-5)?;
            let qkv = tp.linear(&h, &v[1], Some(&v[2]))?;
            let opts = AttentionOptions {
                layout: SeqLayout::contiguous(2, 3),
                heads: 2,
                dropout: None,
            };
            let a = tp.attention(&qkv, &opts)?;
            let o = tp.linear(&a, &v[3], Some(&v[4]))?;
            let r = tp.add(&v[0], &o)?;
            let g = tp.gelu(&r)?;
            tp.mul(&g, &r)
        },
    );
}

#[test]
fn full_mha_in_pytorch_layout() {
    // B = 1, T = 3, L = 4, E = 24 with 2 heads of 12; both MATB streams.
    let (tt, l, e) = (3, 4, 24);
    for layout in [SeqLayout::spatial(1, tt, l), SeqLayout::depth(1, tt, l)] {
        gradcheck(
            "mha",
            &[
                t(&[tt * l, e], 1),
                t(&[3 * e, e], 2),
                t(&[3 * e], 3),
                t(&[e, e], 4),
                t(&[e], 5),
            ],
            |tp, v| {
                let p = MhaParams {
                    in_proj_weight: &v[1],
                    in_proj_bias: &v[2],
                    out_proj_weight: &v[3],
                    out_proj_bias: &v[4],
                };
                let opts = AttentionOptions {
                    layout,
                    heads: 2,
                    dropout: None,
                };
                tp.mha(&v[0], &p, &opts)
            },
        );
    }
}

#[test]
fn conv3d_three_cubed_padded_and_one_cubed() {
    // Odd, unequal sides; 3³ with padding 1 (same size) and without (it
    // shrinks), and 1³ with a bias.
    let (d, h, w) = (3, rand_size(2, 5, 40), 4);
    for (k, pad, bias) in [(3, 1, false), (3, 0, false), (1, 0, true), (3, 1, true)] {
        let x = t(&[2, 3, d, h, w], 50 + k as u64);
        let wt = t(&[2, 3, k, k, k], 51 + pad as u64);
        if bias {
            gradcheck("conv3d+b", &[x, wt, t(&[2], 52)], |tp, v| {
                tp.conv3d(&v[0], &v[1], Some(&v[2]), pad)
            });
        } else {
            gradcheck("conv3d", &[x, wt], |tp, v| tp.conv3d(&v[0], &v[1], None, pad));
        }
    }
}

#[test]
fn batch_norm3d_in_training_and_evaluation_and_relu() {
    use nemesis::ops::BatchStats;
    let x = t(&[2, 3, 2, rand_size(2, 4, 41), 3], 70);
    let running = BatchStats::Running {
        mean: vec![0.1, -0.2, 0.3],
        var: vec![0.5, 1.5, 0.25],
    };
    for stats in [BatchStats::Batch, running] {
        gradcheck("batch_norm3d", &[x.clone(), t(&[3], 71), t(&[3], 72)], |tp, v| {
            Ok(tp.batch_norm3d(&v[0], &v[1], &v[2], &stats, 1e-5)?.0)
        });
    }
    gradcheck("relu", &[t(&[3, 5, 2], 73)], |tp, v| tp.relu(&v[0]));
}

#[test]
fn resize3d_up_and_to_any_size() {
    let x = t(&[1, 2, 2, 3, rand_size(2, 4, 42)], 80);
    for size in [[4, 6, 6], [3, 5, 2], [1, 1, 1]] {
        gradcheck("resize3d", std::slice::from_ref(&x), |tp, v| tp.resize3d(&v[0], size));
    }
}

#[test]
fn transpose12() {
    gradcheck("transpose12", &[t(&[2, 3, 4], 82)], |tp, v| tp.transpose12(&v[0]));
}

#[test]
fn dice_ce() {
    let (b, c, d, h, w) = (2, 3, 2, 3, 2);
    let labels: Vec<u32> = (0..b * d * h * w).map(|k| (k * 7 % 5 % 3) as u32).collect();
    gradcheck("dice_ce", &[t(&[b, c, d, h, w], 81)], |tp, v| {
        tp.dice_ce(&v[0], &labels)
    });
}
