//! A decoder's steps on the emulated driver: `T` one-step training passes chained through
//! their states, walked back one at a time with their parameters' gradients deferred
//! (`driver::backward_step`), then those gradients computed once over all the steps
//! (`driver::deferred_params`). On the emulation (whose GEMM sums each element on its own) this
//! gives the bits of one call over the whole sequence, for every cell and option a decoder can
//! have, f32 and 16-bit storage, per-step and persistent backward.

use super::super::driver::{backward_step, deferred_params, CudaStepGrads};
use super::super::emulation::Emulation;
use super::*;
use crate::backend::host::variational_dropout::VariationalDropout;
use crate::CellKind;
use half::bf16;

/// `[dx, dh0, dc0, dparams]` and `dparams` accumulated onto itself.
type Grads<T> = ([Vec<T>; 4], Vec<T>);

impl<T: Element> Problem<T> {
    /// The problem's whole call as a decoder's steps on `exec`: the outputs of each step (must
    /// be the whole call's rows), then the steps walked back from the last, then the deferred
    /// parameters' gradients, Overwrite into NaN, then Accumulate onto them.
    fn stepped_on(&self, exec: &Exec<'_>) -> ([Vec<T>; 3], Grads<T>) {
        let (cfg, shape) = (&self.cfg, &self.shape);
        let (tl, bl) = (shape.steps(), shape.batch());
        let one = SeqShape::new(1, bl).unwrap();
        let (xw, yw) = (bl * cfg.input_size(), bl * cfg.output_size());
        let lstm = self.lstm();
        let masks = self.masks();
        // Forward, one step at a time from the problem's h0, c0.
        let (mut h, mut c) = (self.h0.clone(), self.c0.clone().unwrap_or_default());
        let mut y = Vec::new();
        let mut reserves = Vec::new();
        for t in 0..tl {
            let mut r = CudaReserve::default();
            r.recurrent_dropout = VariationalDropout::recurrent(cfg, Some(&masks)).unwrap();
            r.input_dropout = VariationalDropout::input(cfg, Some(&masks)).unwrap();
            let (mut yt, mut hn) = (self.out(one.y_shape(cfg)), self.out(one.h_shape(cfg)));
            let mut cn = if lstm { self.out(one.c_shape(cfg)) } else { Vec::new() };
            let io = ForwardViews {
                x: view(&self.x[t * xw..(t + 1) * xw]),
                h0: Some(view(&h)),
                c0: lstm.then(|| view(&c)),
                y: view_mut(&mut yt),
                hn: Some(view_mut(&mut hn)),
                cn: lstm.then(|| view_mut(&mut cn)),
            };
            forward(exec, self.weights(), &one, io, Some(&mut r)).unwrap();
            y.extend(yt);
            (h, c) = (hn, cn);
            reserves.push(r);
        }
        // Backward, from the last step, each step's dy and the state gradients carried.
        let (mut dh, mut dc) = (self.dhn.clone(), self.dcn.clone().unwrap_or_default());
        let mut dx_rev = Vec::new();
        let mut acc = CudaStepGrads::default();
        for t in (0..tl).rev() {
            let mut dx = self.out(one.x_shape(cfg));
            let mut dh0 = self.out(one.h_shape(cfg));
            let mut dc0 = if lstm { self.out(one.c_shape(cfg)) } else { Vec::new() };
            let g = BackwardViews {
                dy: Some(view(&self.dy[t * yw..(t + 1) * yw])),
                dhn: Some(view(&dh)),
                dcn: lstm.then(|| view(&dc)),
                dx: Some(view_mut(&mut dx)),
                dh0: Some(view_mut(&mut dh0)),
                dc0: lstm.then(|| view_mut(&mut dc0)),
                dparams: None,
                mode: GradMode::Accumulate,
            };
            backward_step(exec, self.weights(), &one, &SavedViews::new(&reserves[t]), g, &mut acc).unwrap();
            assert_eq!(acc.steps(), tl - t);
            dx_rev.push(dx);
            (dh, dc) = (dh0, dc0);
        }
        let dx: Vec<T> = dx_rev.into_iter().rev().flatten().collect();
        let steps: Vec<SavedViews> = reserves.iter().map(SavedViews::new).collect();
        let mut dp = nans::<T>(self.layout.len());
        deferred_params(exec, self.weights(), &steps, &acc, view_mut(&mut dp), GradMode::Overwrite).unwrap();
        let mut twice = dp.clone();
        deferred_params(exec, self.weights(), &steps, &acc, view_mut(&mut twice), GradMode::Accumulate).unwrap();
        ([y, h, c], ([dx, dh, dc, dp], twice))
    }

    /// The steps against the whole call on the same `exec`, bit for bit.
    fn check_steps(&self, exec: &Exec<'_>, what: &str) {
        let ([y, hn, cn], reserve) = self.train_on(exec);
        let whole = self.backward_on(exec, &reserve);
        let whole_twice = self.accumulate_on(exec, &reserve, &whole[3]);
        let (fwd, (grads, twice)) = self.stepped_on(exec);
        for (name, got, want) in [("y", &fwd[0], &y), ("hn", &fwd[1], &hn), ("cn", &fwd[2], &cn)] {
            assert!(bits(got) == bits(want), "{what}: the steps' {name} differ from the whole call's");
        }
        for (i, name) in ["dx", "dh0", "dc0", "dparams"].iter().enumerate() {
            assert!(grads[i].iter().all(|v| v.to_f64().is_finite()), "{what}: {name} not all written");
            assert!(bits(&grads[i]) == bits(&whole[i]), "{what}: the steps' {name} differ from the whole call's");
        }
        assert!(bits(&twice) == bits(&whole_twice), "{what}: the deferred gradients accumulated differ from the whole call's");
    }
}

/// The decoder stacks checked: every cell, layers, projection, the cell options, layer norm,
/// recurrent and input dropout, no bias.
fn decoders() -> Vec<(&'static str, RnnConfig)> {
    let lstm = || RnnConfig::new(CellKind::Lstm, 5, 7).num_layers(2);
    let gru = || RnnConfig::new(CellKind::Gru, 6, 5).num_layers(2);
    vec![
        ("lstm", lstm().build().unwrap()),
        ("lstm_proj", lstm().proj_size(4).build().unwrap()),
        ("lstm_peephole_clip", lstm().peephole(true).gate_clip(0.8).build().unwrap()),
        ("lstm_input_forget", lstm().input_forget(true).bias(false).build().unwrap()),
        ("lstm_ln_peephole", lstm().layer_norm(true).peephole(true).build().unwrap()),
        ("lstm_proj_dropouts", lstm().proj_size(3).recurrent_dropout(0.3).input_dropout(0.2).build().unwrap()),
        ("gru", gru().build().unwrap()),
        ("gru_reset_before", gru().linear_before_reset(false).build().unwrap()),
        ("gru_ln", gru().layer_norm(true).build().unwrap()),
        ("gru_dropouts", gru().recurrent_dropout(0.25).input_dropout(0.25).build().unwrap()),
        ("rnn_tanh", RnnConfig::new(CellKind::RnnTanh, 4, 6).num_layers(3).bias(false).build().unwrap()),
        ("rnn_relu_clip", RnnConfig::new(CellKind::RnnRelu, 4, 6).gate_clip(1.5).build().unwrap()),
    ]
}

#[test]
fn deferred_steps_give_the_whole_calls_bits() {
    for (i, (name, cfg)) in decoders().into_iter().enumerate() {
        // B = 3 takes the persistent backward where a layer has no option; B = 11 does not.
        for (b, t) in [(3, 4), (11, 2)] {
            let p = Problem::<f32>::new(&cfg, &SeqShape::new(t, b).unwrap(), 40 + i as u64, 1.0);
            let emulation = Emulation::default();
            for persistent in [false, true] {
                let exec = emulation.exec().with_persistent(persistent);
                p.check_steps(&exec, &format!("{name} B={b} T={t} persistent={persistent}"));
            }
        }
    }
}

/// 16-bit storage, without layer norm: its bf16 bounds, which take the problem's sampled gains,
/// are about the gradients' own size on these problems, so would pass any result (half_storage.rs
/// checks the layer-normalised 16-bit path where its bounds hold). The steps hand their states
/// over in the storage type, rounding what the whole call keeps in f32 (an LSTM's `c`, the
/// carried `dh`), so they are not the whole call's bits: every output and gradient within the
/// derived 16-bit bounds of the f64 reference's whole call, and Accumulate adding in f32 and
/// rounding once.
#[test]
fn deferred_steps_with_bf16_storage_are_within_the_derived_bounds() {
    for (i, (name, cfg)) in decoders().into_iter().filter(|(_, c)| !c.layer_norm()).enumerate() {
        let p = Problem::<bf16>::new(&cfg, &SeqShape::new(3, 4).unwrap(), 90 + i as u64, 1.0);
        let emulation = Emulation::default();
        let (fwd, (grads, twice)) = p.stepped_on(&emulation.exec().with_storage(crate::element::Dtype::BF16));
        let got: Vec<Vec<bf16>> = fwd.into_iter().chain(grads).collect();
        p.within_bounds(&got).unwrap_or_else(|e| panic!("{name}: {e}"));
        // (As half_storage.rs's Accumulate check: round(g + s) within 2u·|2g| of 2g.)
        for (j, (&a, &g)) in twice.iter().zip(&got[6]).enumerate() {
            let (a, g) = (a.to_f64(), g.to_f64());
            assert!((a - 2.0 * g).abs() <= 2.0 * 2f64.powi(-8) * (2.0 * g).abs(), "{name}: Accumulate: dparams[{j}] = {a}, 2·{g}");
        }
    }
}

/// Supplied masks (a drawn stream's, read back) in a decoder's steps: each one-step pass
/// uploads the bits it reads and the deferred parameters' gradients read the first step's (the
/// per-sequence masks, the same at every step). The steps give the whole call's bits, and
/// those are the drawn stream's.
#[test]
fn deferred_steps_with_supplied_masks_give_the_drawn_bits() {
    use crate::masks::{MaskStream, SuppliedMasks};
    let dropouts = decoders().into_iter().filter(|(_, c)| c.recurrent_dropout().is_some() || c.input_dropout().is_some());
    for (name, cfg) in dropouts {
        let shape = SeqShape::new(4, 3).unwrap();
        let p = Problem::<f32>::new(&cfg, &shape, 7, 1.0);
        let supplied = MaskStream::supplied(SuppliedMasks::drawn(&p.masks(), &cfg, &shape).unwrap());
        let q = Problem::<f32>::new(&cfg, &shape, 7, 1.0).with_masks(supplied);
        let emulation = Emulation::default();
        let exec = emulation.exec();
        q.check_steps(&exec, &format!("{name}, supplied masks"));
        let ((want_fwd, (want, want_twice)), (got_fwd, (got, got_twice))) = (p.stepped_on(&exec), q.stepped_on(&exec));
        for (i, (g, w)) in got_fwd.iter().chain(&got).zip(want_fwd.iter().chain(&want)).enumerate() {
            assert!(bits(g) == bits(w), "{name}: output {i} of the supplied masks' steps differs from the drawn ones'");
        }
        assert!(bits(&got_twice) == bits(&want_twice), "{name}: Accumulate");
    }
}
