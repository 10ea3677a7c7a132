//! Shapes that do not fit give an error naming the op and both shapes; no op panics.

use nemesis::autograd::Tape;
use nemesis::ops::{AttentionOptions, AttnDropout};
use nemesis::rng::RngStream;
use nemesis::tensor::SeqLayout;
use nemesis::{DType, Tensor};

fn z(tape: &Tape, shape: &[usize]) -> nemesis::Var {
    tape.constant(Tensor::zeros(shape.to_vec(), DType::F32))
}

/// The error must name the op and every listed shape.
fn names(err: nemesis::Error, op: &str, shapes: &[&str]) {
    let msg = err.to_string();
    assert!(msg.starts_with(op), "`{msg}` should start with `{op}`");
    for s in shapes {
        assert!(msg.contains(s), "`{msg}` should name {s}");
    }
}

#[test]
fn binary_shape_mismatches_name_op_and_shapes() {
    let t = Tape::new();
    names(
        t.linear(&z(&t, &[2, 5]), &z(&t, &[3, 4]), None).unwrap_err(),
        "linear",
        &["[2, 5]", "[3, 4]"],
    );
    names(
        t.linear(&z(&t, &[2, 4]), &z(&t, &[3, 4]), Some(&z(&t, &[4])))
            .unwrap_err(),
        "linear",
        &["[3, 4]", "[4]"],
    );
    names(
        t.linear(&z(&t, &[2, 4]), &z(&t, &[4]), None).unwrap_err(),
        "linear",
        &["[4]"],
    );
    names(
        t.matmul(&z(&t, &[2, 3, 4]), &z(&t, &[2, 5, 6])).unwrap_err(),
        "matmul",
        &["[2, 3, 4]", "[2, 5, 6]"],
    );
    names(
        t.matmul(&z(&t, &[2, 3, 4]), &z(&t, &[3, 4, 6])).unwrap_err(),
        "matmul",
        &["[2, 3, 4]", "[3, 4, 6]"],
    );
    names(t.matmul(&z(&t, &[4]), &z(&t, &[4])).unwrap_err(), "matmul", &["[4]"]);
    names(
        t.add(&z(&t, &[2, 3]), &z(&t, &[2])).unwrap_err(),
        "add",
        &["[2, 3]", "[2]"],
    );
    names(
        t.mul(&z(&t, &[2, 3]), &z(&t, &[3, 3])).unwrap_err(),
        "mul",
        &["[2, 3]", "[3, 3]"],
    );
    names(
        t.layer_norm(&z(&t, &[2, 3]), &z(&t, &[4]), &z(&t, &[3]), 1e-5)
            .unwrap_err(),
        "layer_norm",
        &["[2, 3]", "[4]"],
    );
    names(
        t.gate_mix(&z(&t, &[2, 3]), &z(&t, &[3, 2]), &z(&t, &[])).unwrap_err(),
        "gate_mix",
        &["[2, 3]", "[3, 2]"],
    );
    names(
        t.gate_mix(&z(&t, &[2, 3]), &z(&t, &[2, 3]), &z(&t, &[2])).unwrap_err(),
        "gate_mix",
        &["[2, 3]", "[2]"],
    );
    let mask = Tensor::zeros([2, 4], DType::F32);
    names(
        t.masked_mse(&z(&t, &[2, 3, 5]), &z(&t, &[2, 3, 5]), &mask).unwrap_err(),
        "masked_mse",
        &["[2, 3, 5]", "[2, 4]"],
    );
    let mask = Tensor::zeros([2, 3], DType::F32);
    names(
        t.masked_mse(&z(&t, &[2, 3, 5]), &z(&t, &[2, 3, 4]), &mask).unwrap_err(),
        "masked_mse",
        &["[2, 3, 5]", "[2, 3, 4]"],
    );
    names(
        t.scatter_rows(&z(&t, &[1, 2, 3]), &[0, 1], 4, &z(&t, &[2]))
            .unwrap_err(),
        "scatter_rows",
        &["[1, 2, 3]", "[2]"],
    );
    names(
        nemesis::ops::psnr(&Tensor::zeros([2], DType::F32), &Tensor::zeros([3], DType::F32)).unwrap_err(),
        "psnr",
        &["[2]", "[3]"],
    );
    names(
        t.reshape(&z(&t, &[2, 3]), [4, 2]).unwrap_err(),
        "reshape",
        &["[2, 3]", "[4, 2]"],
    );
}

#[test]
fn single_operand_errors() {
    let t = Tape::new();
    names(t.softmax(&z(&t, &[3, 0])).unwrap_err(), "softmax", &["[3, 0]"]);
    names(t.softmax(&z(&t, &[])).unwrap_err(), "softmax", &["[]"]);
    names(t.mean(&z(&t, &[2, 3]), 2).unwrap_err(), "mean", &["[2, 3]"]);
    names(
        t.gather_rows(&z(&t, &[2, 3]), &[0]).unwrap_err(),
        "gather_rows",
        &["[2, 3]"],
    );
    names(
        t.gather_rows(&z(&t, &[1, 3, 2]), &[3]).unwrap_err(),
        "gather_rows",
        &["index 3"],
    );
    names(
        t.gather_rows(&z(&t, &[2, 3, 2]), &[0, 1, 2]).unwrap_err(),
        "gather_rows",
        &["batch of 2"],
    );
    names(
        t.scatter_rows(&z(&t, &[1, 2, 3]), &[1, 1], 4, &z(&t, &[3]))
            .unwrap_err(),
        "scatter_rows",
        &["twice"],
    );
    names(
        t.dropout(&z(&t, &[3]), 1.0, RngStream::new(0, 0)).unwrap_err(),
        "dropout",
        &["[0, 1)"],
    );
    names(
        t.layer_norm(&z(&t, &[2, 3]), &z(&t, &[3]), &z(&t, &[3]), -1.0)
            .unwrap_err(),
        "layer_norm",
        &["eps"],
    );
}

#[test]
fn attention_errors() {
    let t = Tape::new();
    let opts = |layout, heads| AttentionOptions {
        layout,
        heads,
        dropout: None,
    };
    names(
        t.attention(&z(&t, &[6, 10]), &opts(SeqLayout::contiguous(2, 3), 1))
            .unwrap_err(),
        "attention",
        &["[6, 10]", "3·E"],
    );
    names(
        t.attention(&z(&t, &[6, 12]), &opts(SeqLayout::contiguous(2, 3), 3))
            .unwrap_err(),
        "attention",
        &["[6, 12]", "heads"],
    );
    names(
        t.attention(&z(&t, &[6, 12]), &opts(SeqLayout::contiguous(2, 4), 2))
            .unwrap_err(),
        "attention layout",
        &["8 rows", "6"],
    );
    let mut bad = opts(SeqLayout::contiguous(2, 3), 2);
    bad.dropout = Some(AttnDropout {
        p: 1.5,
        rng: RngStream::new(0, 0),
    });
    names(
        t.attention(&z(&t, &[6, 12]), &bad).unwrap_err(),
        "attention",
        &["dropout"],
    );
}

#[test]
fn dtype_mismatch_is_an_error() {
    let t = Tape::new();
    let a = t.constant(Tensor::zeros([2, 3], DType::F32));
    let b = t.constant(Tensor::zeros([2, 3], DType::F64));
    names(t.add(&a, &b).unwrap_err(), "add", &["F32", "F64"]);
    assert!(Tensor::from_vec(vec![1.0f32; 5], [2, 3]).is_err());
}
