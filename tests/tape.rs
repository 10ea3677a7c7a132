//! The tape's contract: parameter gradients land in the store and add up
//! across micro-batches, inputs get gradients only when they ask, an
//! inference scope records nothing.

mod common;

use common::{rand_tensor, rel_err};
use nemesis::autograd::{ParamStore, Tape};
use nemesis::tensor::Readers;
use nemesis::{DType, Error, Tensor};

fn store_with_linear() -> (ParamStore, nemesis::autograd::ParamId, nemesis::autograd::ParamId) {
    let mut store = ParamStore::new();
    let w = store.add("lin.weight", rand_tensor([3, 4], 1, DType::F64)).unwrap();
    let b = store.add("lin.bias", rand_tensor([3], 2, DType::F64)).unwrap();
    (store, w, b)
}

fn loss_of(
    tape: &Tape,
    store: &ParamStore,
    w: nemesis::autograd::ParamId,
    b: nemesis::autograd::ParamId,
    x: &Tensor,
) -> nemesis::Var {
    let x = tape.constant(x.clone());
    let y = tape
        .linear(&x, &tape.param(store, w), Some(&tape.param(store, b)))
        .unwrap();
    let y2 = tape.mul(&y, &y).unwrap();
    let m = tape.mean(&y2, 1).unwrap();
    tape.mean(&m, 0).unwrap()
}

#[test]
fn parameter_gradients_fill_and_accumulate() {
    let (mut store, w, b) = store_with_linear();
    let x1 = rand_tensor([5, 4], 3, DType::F64);
    let x2 = rand_tensor([5, 4], 4, DType::F64);

    let grad_of = |store: &mut ParamStore, x: &Tensor| {
        store.zero_grad();
        let tape = Tape::new();
        let l = loss_of(&tape, store, w, b, x);
        tape.backward(&l, store).unwrap();
        (
            store.get(w).grad.clone().unwrap().to_f64_vec().unwrap(),
            store.get(b).grad.clone().unwrap().to_f64_vec().unwrap(),
        )
    };
    let (gw1, gb1) = grad_of(&mut store, &x1);
    let (gw2, gb2) = grad_of(&mut store, &x2);
    assert!(gw1.iter().any(|&v| v != 0.0) && gb1.iter().any(|&v| v != 0.0));

    // Two micro-batches without clearing: the sum of the two.
    store.zero_grad();
    for x in [&x1, &x2] {
        let tape = Tape::new();
        let l = loss_of(&tape, &store, w, b, x);
        tape.backward(&l, &mut store).unwrap();
    }
    let sum_w: Vec<f64> = gw1.iter().zip(&gw2).map(|(a, b)| a + b).collect();
    let sum_b: Vec<f64> = gb1.iter().zip(&gb2).map(|(a, b)| a + b).collect();
    assert!(rel_err(&store.get(w).grad.clone().unwrap().to_f64_vec().unwrap(), &sum_w) < 1e-14);
    assert!(rel_err(&store.get(b).grad.clone().unwrap().to_f64_vec().unwrap(), &sum_b) < 1e-14);

    store.zero_grad();
    assert!(store.get(w).grad.is_none() && store.get(b).grad.is_none());
}

#[test]
fn a_parameter_used_twice_gets_both_contributions() {
    let mut store = ParamStore::new();
    let s = store.add("s", Tensor::scalar(3.0, DType::F64)).unwrap();
    let tape = Tape::new();
    // loss = s·s through two separate parameter leaves: d/ds = 2s = 6.
    let a = tape.param(&store, s);
    let b = tape.param(&store, s);
    let l = tape.mul(&a, &b).unwrap();
    tape.backward(&l, &mut store).unwrap();
    assert_eq!(store.get(s).grad.clone().unwrap().to_f64_vec().unwrap(), vec![6.0]);
}

#[test]
fn inputs_get_gradients_only_when_asked() {
    let (mut store, w, b) = store_with_linear();
    let tape = Tape::new();
    let asks = tape.input(rand_tensor([2, 4], 5, DType::F64), true);
    let silent = tape.input(rand_tensor([2, 4], 6, DType::F64), false);
    let s = tape.add(&asks, &silent).unwrap();
    let y = tape
        .linear(&s, &tape.param(&store, w), Some(&tape.param(&store, b)))
        .unwrap();
    let l = tape.mean(&tape.mean(&y, 1).unwrap(), 0).unwrap();
    let grads = tape.backward(&l, &mut store).unwrap();
    let g = grads.get(&asks).expect("asked for a gradient");
    assert_eq!(g.shape().dims(), [2, 4]);
    assert!(grads.get(&silent).is_none());
    // d mean(x·Wᵀ + b)/dx = column means of W / rows.
    let wv = store.get(w).value.to_f64_vec().unwrap();
    for (i, &gi) in g.to_f64_vec().unwrap().iter().enumerate() {
        let c = i % 4;
        let want = (0..3).map(|o| wv[o * 4 + c]).sum::<f64>() / 3.0 / 2.0;
        assert!((gi - want).abs() < 1e-14);
    }
}

#[test]
fn inference_records_nothing() {
    let (store, w, b) = store_with_linear();
    let x = rand_tensor([5, 4], 3, DType::F64);
    let tape = Tape::inference();
    let l = loss_of(&tape, &store, w, b, &x);
    assert_eq!(tape.num_nodes(), 0);
    assert!(!l.tracked());

    let tape = Tape::new();
    let inside = tape.no_grad(|t| loss_of(t, &store, w, b, &x));
    assert_eq!(tape.num_nodes(), 0);
    assert!(!inside.tracked());
    let outside = loss_of(&tape, &store, w, b, &x);
    assert!(tape.num_nodes() > 0 && outside.tracked());
    assert_eq!(
        inside.value().to_f64_vec().unwrap(),
        outside.value().to_f64_vec().unwrap()
    );
}

#[test]
fn backward_errors_are_errors() {
    let (mut store, w, b) = store_with_linear();
    let x = rand_tensor([5, 4], 3, DType::F64);
    let tape = Tape::inference();
    let l = loss_of(&tape, &store, w, b, &x);
    assert!(matches!(tape.backward(&l, &mut store), Err(Error::Autograd(_))));

    let tape = Tape::new();
    let y = tape
        .linear(&tape.constant(x), &tape.param(&store, w), Some(&tape.param(&store, b)))
        .unwrap();
    let err = tape.backward(&y, &mut store).unwrap_err().to_string();
    assert!(err.contains("one element"), "{err}");
}

#[test]
fn duplicate_parameter_names_and_bad_values_are_rejected() {
    let (mut store, w, _) = store_with_linear();
    assert!(store.add("lin.weight", Tensor::zeros([1], DType::F64)).is_err());
    let err = store
        .set_value(w, Tensor::zeros([4, 3], DType::F64))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3, 4]") && err.contains("[4, 3]"), "{err}");
    assert!(store.set_value(w, Tensor::zeros([3, 4], DType::F32)).is_err());
    assert_eq!(store.num_elements(), 15);
    assert_eq!(
        store.id("lin.bias").map(|id| store.get(id).name.clone()),
        Some("lin.bias".into())
    );
}

/// The fused pair of MATB streams (one `rows × 6E` QKV matrix, one
/// `rows × 2E` output) equals two separate attention ops on the halves,
/// forward and backward, with dropout: the CPU form of what the device runs.
#[test]
fn attention_pair_equals_two_attentions_and_concat_splits_its_gradient() {
    use nemesis::ops::{AttentionOptions, AttnDropout};
    use nemesis::rng::RngStream;
    use nemesis::tensor::SeqLayout;
    let (b, t, l, heads, e) = (2, 3, 5, 2, 8);
    let rows = b * t * l;
    let opts = |layout, k| AttentionOptions {
        layout,
        heads,
        dropout: Some(AttnDropout {
            p: 0.2,
            rng: RngStream::new(9, k),
        }),
    };
    let (sa, sb) = (opts(SeqLayout::spatial(b, t, l), 1), opts(SeqLayout::depth(b, t, l), 2));
    let qs = rand_tensor([rows, 3 * e], 21, DType::F64);
    let qd = rand_tensor([rows, 3 * e], 22, DType::F64);
    let g = rand_tensor([rows, 2 * e], 23, DType::F64);
    let mut store = ParamStore::new();

    let tape = Tape::new();
    let (xs, xd) = (tape.input(qs.clone(), true), tape.input(qd.clone(), true));
    let fused = tape
        .attention_pair(&tape.concat(&xs, &xd, 1).unwrap(), &sa, &sb, Readers::Any)
        .unwrap();
    let gf = tape.backward_with(&fused, g.clone(), &mut store).unwrap();

    let tape2 = Tape::new();
    let (ys, yd) = (tape2.input(qs, true), tape2.input(qd, true));
    let apart = tape2
        .concat(
            &tape2.attention(&ys, &sa).unwrap(),
            &tape2.attention(&yd, &sb).unwrap(),
            1,
        )
        .unwrap();
    let ga = tape2.backward_with(&apart, g, &mut store).unwrap();

    assert!(
        rel_err(
            &fused.value().to_f64_vec().unwrap(),
            &apart.value().to_f64_vec().unwrap()
        ) < 1e-13
    );
    for (f, a) in [(&xs, &ys), (&xd, &yd)] {
        let (gf, ga) = (
            gf.get(f).unwrap().to_f64_vec().unwrap(),
            ga.get(a).unwrap().to_f64_vec().unwrap(),
        );
        assert!(rel_err(&gf, &ga) < 1e-13, "{}", rel_err(&gf, &ga));
    }
    // Shapes that do not fit are errors, not panics.
    let tape3 = Tape::new();
    let bad = tape3.input(rand_tensor([rows, 5 * e], 24, DType::F64), false);
    assert!(tape3.attention_pair(&bad, &sa, &sb, Readers::Any).is_err());
    assert!(tape3
        .concat(&bad, &tape3.input(rand_tensor([rows + 1, e], 25, DType::F64), false), 1)
        .is_err());
}
