//! `nemesis flops`: the FLOP accounting of MODEL.md §13, module by module.

use clap::Args;

use super::model_source::ModelSource;
use crate::error::Result;
use crate::host::human_bytes;
use crate::model::{encoder_flops, estimate, training_flops, FlopCount, Pass, Place};

#[derive(Args, Debug)]
pub struct FlopsArgs {
    #[command(flatten)]
    pub model: ModelSource,
    /// The batch the memory estimate is for.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
}

fn g(v: u64) -> String {
    format!("{:.2}", v as f64 / 1e9)
}

fn table(title: &str, f: &FlopCount, with_backward: bool) {
    println!("{title}");
    if with_backward {
        println!(
            "  {:<32} {:>12} {:>12} {:>12}",
            "module", "forward", "backward", "fwd+bwd"
        );
    } else {
        println!("  {:<32} {:>12}", "module", "forward");
    }
    for e in &f.entries {
        if with_backward {
            println!(
                "  {:<32} {:>12} {:>12} {:>12}",
                e.module,
                g(e.forward),
                g(e.backward),
                g(e.forward + e.backward)
            );
        } else {
            println!("  {:<32} {:>12}", e.module, g(e.forward));
        }
    }
    if with_backward {
        println!(
            "  {:<32} {:>12} {:>12} {:>12}",
            "total",
            g(f.forward()),
            g(f.backward()),
            g(f.forward_backward())
        );
    } else {
        println!("  {:<32} {:>12}", "total", g(f.forward()));
    }
}

pub fn run(a: &FlopsArgs) -> Result<()> {
    let c = a.model.load()?;
    println!(
        "FLOPs of one {}×{}×{} superpatch, 2 per multiply-add of every matrix product \
         (attention and the patch-embedding attention included), in GFLOPs.\n",
        c.superpatch_size[0], c.superpatch_size[1], c.superpatch_size[2]
    );
    let t = training_flops(&c);
    table(
        &format!(
            "training step (masked: {} of {} tokens visible; backward skips the input gradient of the \
             layers that read the data)",
            c.visible_tokens(),
            c.num_tokens()
        ),
        &t,
        true,
    );
    println!();
    table("encoder at inference (nothing masked)", &encoder_flops(&c), false);
    println!();
    println!(
        "paper-style figure: {:.2} G multiply-adds of the FFN, patch-embedding linear layers and head \
         alone (attention and its projections left out); this is what the paper's \"GFLOPs\" counts, \
         not the totals above.",
        t.paper_macs() as f64 / 1e9
    );
    println!();
    println!(
        "memory at batch {} (the estimate commands check before allocating; docs/BENCHMARKS.md, \"Memory estimates\"):",
        a.batch
    );
    for (what, pass, place) in [
        ("training, CPU", Pass::Train, Place::Cpu),
        ("training, GPU", Pass::Train, Place::Device),
        ("encoding, CPU", Pass::Infer, Place::Cpu),
    ] {
        let e = estimate(&c, a.batch, pass, place)?;
        println!("  {what:<16} {:>10}  ({})", human_bytes(e.total()), e.breakdown());
    }
    Ok(())
}
