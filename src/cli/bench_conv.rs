//! `nemesis bench conv`: the segmentation decoder's convolutions on the
//! CPU (SPEC §14), each shape's forward, weight gradient and input
//! gradient by the path a step takes (on CPUs with our kernel, the
//! implicit GEMM of conv_implicit.rs) beside the plain im2col path, timed
//! in turns, as GFLOP/s and a fraction of the measured FMA peak.

use clap::Args;

use crate::backend::cpu::conv::{Conv3d, Path};
use crate::error::{Error, Result};
use crate::seg::SegConfig;

use super::bench_gemm::{measured_peak, median_times, values};

/// One pass of a convolution by a given path.
type Pass<'a> = dyn Fn(Path) -> Vec<f32> + 'a;

#[derive(Args, Debug)]
pub struct ConvArgs {
    #[command(flatten)]
    pub model: super::model_source::ModelSource,
    /// Crops per step.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Classes, background included (the head's output channels).
    #[arg(long, default_value_t = 9)]
    pub classes: usize,
    /// Timed repetitions of each call (the median is shown).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

/// The decoder's convolutions at batch `batch`, named as the checkpoint's
/// keys: per up-block its two 3³ convolutions at the doubled grid, the
/// skip projections (1³, at the encoder's grid), and the head.
fn shapes(c: &SegConfig, batch: usize) -> Vec<(String, Conv3d)> {
    let e = c.encoder.embed_dim;
    let ch = c.decoder_channels;
    let mut g = c.encoder.grid();
    let conv = |cin, cout, dims, k, pad| Conv3d {
        batch,
        cin,
        cout,
        dims,
        k,
        pad,
    };
    let mut v = Vec::new();
    for i in 0..3 {
        g = g.map(|n| 2 * n);
        let cin = if i == 0 { e } else { ch[i - 1] };
        v.push((format!("up{i}.conv0"), conv(cin, ch[i], g, 3, 1)));
        v.push((format!("up{i}.conv1"), conv(ch[i], ch[i], g, 3, 1)));
        if i < 2 {
            v.push((format!("skip{i}"), conv(e, ch[i], c.encoder.grid(), 1, 0)));
        }
    }
    v.push(("head".to_string(), conv(ch[2], c.num_classes, g, 1, 0)));
    v
}

pub fn run(a: &ConvArgs) -> Result<()> {
    if a.batch == 0 || a.reps == 0 {
        return Err(Error::invalid("bench conv", "--batch and --reps must be at least 1"));
    }
    let config = SegConfig::new(a.model.load()?, a.classes)?;
    let peak = measured_peak();
    println!(
        "decoder convolutions at batch {}, f32, median of {} runs: the step's path against im2col",
        a.batch, a.reps
    );
    println!(
        "{:<11} {:>11} {:>4} {:>5} {:>13} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "conv", "grid", "k", "pass", "cin→cout", "ms", "GFLOP/s", "of peak", "im2col ms", "of peak"
    );
    for (name, conv) in shapes(&config, a.batch) {
        let x = values(conv.batch * conv.cin * conv.dims.iter().product::<usize>(), 1);
        let w = values(conv.cout * conv.cin * conv.k.pow(3), 2);
        let out: usize = conv.out_dims().iter().product();
        let dy = values(conv.batch * conv.cout * out, 3);
        let flops = 2.0 * (conv.batch * out * conv.cout * conv.cin * conv.k.pow(3)) as f64;
        let passes: [(&str, &Pass); 3] = [
            ("fwd", &|p| conv.forward_by(p, &x, &w, None)),
            ("dW", &|p| conv.weight_grad_by(p, &x, &dy)),
            ("dX", &|p| conv.input_grad_by(p, &w, &dy)),
        ];
        for (pass, f) in passes {
            let t = median_times(
                a.reps,
                &mut [
                    &mut || {
                        std::hint::black_box(f(Path::Fastest));
                    },
                    &mut || {
                        std::hint::black_box(f(Path::Im2col));
                    },
                ],
            );
            println!(
                "{:<11} {:>11} {:>4} {:>5} {:>13} {:>8.2} {:>8.1} {:>7.1}% {:>10.2} {:>7.1}%",
                name,
                format!("{}×{}×{}", conv.dims[0], conv.dims[1], conv.dims[2]),
                format!("{}³", conv.k),
                pass,
                format!("{}→{}", conv.cin, conv.cout),
                1e3 * t[0],
                flops / t[0] / 1e9,
                100.0 * flops / t[0] / peak,
                1e3 * t[1],
                100.0 * flops / t[1] / peak
            );
        }
    }
    Ok(())
}
