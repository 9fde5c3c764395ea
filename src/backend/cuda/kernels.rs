//! The one registry of the CUDA kernels: every `extern "C" __global__` entry of `kernels/*.cu`
//! is named once here, in [`registry!`], with its id, its `.cu` file, its f32/f16/bf16 entry
//! names, whether it is a persistent (cooperative, shared-memory opt-in) kernel, and its typed
//! argument list. Everything else is generated from that table: the [`KernelId`] enum and its
//! entry names (the device loader in `device.rs` loads each of them), the argument structs that
//! a launch takes (one per signature: the struct's field types are the C signature, so a launch
//! with a wrong argument does not compile), and, in the unit tests, the host emulation's
//! declarations of the same entries compiled as C++ (`emulation.rs`).
//!
//! Adding a kernel is one entry in the table (and its `.cu` code); a new signature is one
//! struct header above its kernels.

use crate::element::Dtype;
use std::any::Any;
use std::marker::PhantomData;

/// The table of kernels, handed to `$callback!` (a macro that generates what it needs from it).
///
/// Each signature is `Name(argument: type, ...) { kernel: file, kind [dtype entry, ...]; ... }`:
/// `Name` the argument struct every kernel of the group takes (fields in the C signature's
/// order: `i32` for `int`, `i64` for `long long`, `f32` for `float`, `u64` for a device
/// pointer), each kernel with its file in `kernels/` (without `.cu`), its kind (`grid_stride`:
/// any grid, [`super::exec::grid`]; `persistent`: a cooperative launch of co-resident blocks with
/// opted-in dynamic shared memory; `persistent_device_only`: the same, with no host emulation)
/// and its entry name for each storage type it has.
macro_rules! registry {
    ($callback:ident) => {
        $callback! {
            /// One LSTM step after the recurrent GEMM (kernels/lstm_pointwise.cu).
            LstmForwardStepArgs(batch: i32, hidden: i32, step: i32, lengths: u64, xg: u64, hg: u64, b_ih: u64, b_hh: u64,
                c_prev: u64, keep: u64, gates: u64, c: u64, m: u64, y: u64, y_stride: i32) {
                LstmForwardStep: lstm_pointwise, grid_stride
                    [f32 lstm_forward_step, f16 lstm_forward_step_f16, bf16 lstm_forward_step_bf16];
            }
            /// One LSTM step with the cell options: peepholes (`[3, H]` or null), the gate clip (0: none),
            /// the coupled input-forget gate.
            LstmForwardStepOptArgs(batch: i32, hidden: i32, step: i32, lengths: u64, xg: u64, hg: u64, b_ih: u64, b_hh: u64,
                c_prev: u64, keep: u64, gates: u64, c: u64, m: u64, y: u64, y_stride: i32, peephole: u64, clip: f32,
                input_forget: i32) {
                LstmForwardStepOpt: lstm_pointwise, grid_stride
                    [f32 lstm_forward_step_opt, f16 lstm_forward_step_opt_f16, bf16 lstm_forward_step_opt_bf16];
            }
            /// The masking after the projection GEMM `h = m·W_hr^T`.
            LstmProjectionFinishArgs(batch: i32, hout: i32, step: i32, lengths: u64, h_prev: u64, h: u64, y: u64, y_stride: i32) {
                LstmProjectionFinish: lstm_pointwise, grid_stride
                    [f32 lstm_projection_finish, f16 lstm_projection_finish_f16, bf16 lstm_projection_finish_bf16];
            }
            /// `dh` before a backward step with projection.
            LstmProjectionBackwardPrepareArgs(batch: i32, hout: i32, step: i32, lengths: u64, dy: u64, dy_stride: i32,
                carry: u64, dh: u64, dh_save: u64) {
                LstmProjectionBackwardPrepare: lstm_pointwise, grid_stride [f32 lstm_projection_backward_prepare,
                    f16 lstm_projection_backward_prepare_f16, bf16 lstm_projection_backward_prepare_bf16];
            }
            /// One LSTM backward step.
            LstmBackwardStepArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, c: u64, c_prev: u64,
                dm_in: u64, dy: u64, dy_stride: i32, carry: u64, dc: u64, dg: u64) {
                LstmBackwardStep: lstm_pointwise, grid_stride
                    [f32 lstm_backward_step, f16 lstm_backward_step_f16, bf16 lstm_backward_step_bf16];
            }
            /// One LSTM backward step with the cell options, and the peephole gradients' per-row
            /// accumulator `dpeep` `[B, 3H]` (or null).
            LstmBackwardStepOptArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, c: u64, c_prev: u64,
                dm_in: u64, dy: u64, dy_stride: i32, carry: u64, dc: u64, dg: u64, peephole: u64, clip: f32,
                input_forget: i32, dpeep: u64) {
                LstmBackwardStepOpt: lstm_pointwise, grid_stride
                    [f32 lstm_backward_step_opt, f16 lstm_backward_step_opt_f16, bf16 lstm_backward_step_opt_bf16];
            }
            /// One layer-normalised LSTM backward step (the options as `_opt`): the o gate's factor
            /// `dm_tau` `[B, H]` and the output path's `dc` from `lstm_ln_cell_backward`.
            LstmBackwardStepLnArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, c: u64, c_prev: u64,
                dm_in: u64, dy: u64, dy_stride: i32, carry: u64, dc: u64, dg: u64, peephole: u64, clip: f32,
                input_forget: i32, dpeep: u64, dm_tau: u64) {
                LstmBackwardStepLn: lstm_pointwise, grid_stride
                    [f32 lstm_backward_step_ln, f16 lstm_backward_step_ln_f16, bf16 lstm_backward_step_ln_bf16];
            }
            /// One GRU step after the recurrent GEMM (kernels/gru_pointwise.cu).
            GruForwardStepArgs(batch: i32, hidden: i32, step: i32, lengths: u64, xg: u64, hg: u64, b_ih: u64, b_hh: u64,
                h_prev: u64, gates: u64, extra: u64, h: u64, y: u64, y_stride: i32) {
                GruForwardStep: gru_pointwise, grid_stride
                    [f32 gru_forward_step, f16 gru_forward_step_f16, bf16 gru_forward_step_bf16];
            }
            /// One GRU step with the gate clip (`clip > 0`).
            GruForwardStepClipArgs(batch: i32, hidden: i32, step: i32, lengths: u64, xg: u64, hg: u64, b_ih: u64, b_hh: u64,
                h_prev: u64, gates: u64, extra: u64, h: u64, y: u64, y_stride: i32, clip: f32) {
                GruForwardStepClip: gru_pointwise, grid_stride
                    [f32 gru_forward_step_clip, f16 gru_forward_step_clip_f16, bf16 gru_forward_step_clip_bf16];
            }
            /// One GRU backward step.
            GruBackwardStepArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, extra: u64, h_prev: u64,
                dy: u64, dy_stride: i32, carry: u64, dgi: u64, dgh: u64) {
                GruBackwardStep: gru_pointwise, grid_stride
                    [f32 gru_backward_step, f16 gru_backward_step_f16, bf16 gru_backward_step_bf16];
            }
            /// One GRU backward step with the forward's gate clip (`clip > 0`).
            GruBackwardStepClipArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, extra: u64, h_prev: u64,
                dy: u64, dy_stride: i32, carry: u64, dgi: u64, dgh: u64, clip: f32) {
                GruBackwardStepClip: gru_pointwise, grid_stride
                    [f32 gru_backward_step_clip, f16 gru_backward_step_clip_f16, bf16 gru_backward_step_clip_bf16];
            }
            /// One forward part of a GRU step with the reset gate before the recurrent matmul
            /// (kernels/gru_reset_before.cu): `_gates` (`r`, `u = r ⊙ h_prev`; ignores `h`, `y`), then,
            /// after the `W_hn` GEMM, `_output` (`z`, `n`, `h`, `y`; ignores `u`). The gate clip 0: none.
            GruResetBeforeForwardArgs(batch: i32, hidden: i32, step: i32, lengths: u64, xg: u64, hg: u64, b_ih: u64,
                b_hh: u64, h_prev: u64, gates: u64, u: u64, h: u64, y: u64, y_stride: i32, clip: f32) {
                GruResetBeforeForwardGates: gru_reset_before, grid_stride [f32 gru_reset_before_forward_gates,
                    f16 gru_reset_before_forward_gates_f16, bf16 gru_reset_before_forward_gates_bf16];
                GruResetBeforeForwardOutput: gru_reset_before, grid_stride [f32 gru_reset_before_forward_output,
                    f16 gru_reset_before_forward_output_f16, bf16 gru_reset_before_forward_output_bf16];
            }
            /// One backward part of that step: `_output` (`dgi`'s `z`, `n`, the carry `z·dh`; ignores `du`),
            /// then, after `du = dgi[:, n]·W_hn`, `_reset` (`dgi`'s `r`, the carry `+= du·r`; ignores `dy`).
            GruResetBeforeBackwardArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, h_prev: u64, dy: u64,
                dy_stride: i32, carry: u64, du: u64, dgi: u64, clip: f32) {
                GruResetBeforeBackwardOutput: gru_reset_before, grid_stride [f32 gru_reset_before_backward_output,
                    f16 gru_reset_before_backward_output_f16, bf16 gru_reset_before_backward_output_bf16];
                GruResetBeforeBackwardReset: gru_reset_before, grid_stride [f32 gru_reset_before_backward_reset,
                    f16 gru_reset_before_backward_reset_f16, bf16 gru_reset_before_backward_reset_bf16];
            }
            /// One vanilla RNN step after the recurrent GEMM (kernels/rnn_pointwise.cu).
            RnnForwardStepArgs(batch: i32, hidden: i32, step: i32, lengths: u64, xg: u64, hg: u64, b_ih: u64, b_hh: u64,
                h_prev: u64, gates: u64, h: u64, y: u64, y_stride: i32) {
                RnnTanhForwardStep: rnn_pointwise, grid_stride
                    [f32 rnn_tanh_forward_step, f16 rnn_tanh_forward_step_f16, bf16 rnn_tanh_forward_step_bf16];
                RnnReluForwardStep: rnn_pointwise, grid_stride
                    [f32 rnn_relu_forward_step, f16 rnn_relu_forward_step_f16, bf16 rnn_relu_forward_step_bf16];
            }
            /// One vanilla RNN step with the gate clip (`clip > 0`).
            RnnForwardStepClipArgs(batch: i32, hidden: i32, step: i32, lengths: u64, xg: u64, hg: u64, b_ih: u64, b_hh: u64,
                h_prev: u64, gates: u64, h: u64, y: u64, y_stride: i32, clip: f32) {
                RnnTanhForwardStepClip: rnn_pointwise, grid_stride
                    [f32 rnn_tanh_forward_step_clip, f16 rnn_tanh_forward_step_clip_f16, bf16 rnn_tanh_forward_step_clip_bf16];
                RnnReluForwardStepClip: rnn_pointwise, grid_stride
                    [f32 rnn_relu_forward_step_clip, f16 rnn_relu_forward_step_clip_f16, bf16 rnn_relu_forward_step_clip_bf16];
            }
            /// One vanilla RNN backward step.
            RnnBackwardStepArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, dy: u64, dy_stride: i32,
                carry: u64, dg: u64) {
                RnnTanhBackwardStep: rnn_pointwise, grid_stride
                    [f32 rnn_tanh_backward_step, f16 rnn_tanh_backward_step_f16, bf16 rnn_tanh_backward_step_bf16];
                RnnReluBackwardStep: rnn_pointwise, grid_stride
                    [f32 rnn_relu_backward_step, f16 rnn_relu_backward_step_f16, bf16 rnn_relu_backward_step_bf16];
            }
            /// One vanilla RNN backward step with the forward's gate clip (`clip > 0`).
            RnnBackwardStepClipArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, dy: u64, dy_stride: i32,
                carry: u64, dg: u64, clip: f32) {
                RnnTanhBackwardStepClip: rnn_pointwise, grid_stride
                    [f32 rnn_tanh_backward_step_clip, f16 rnn_tanh_backward_step_clip_f16, bf16 rnn_tanh_backward_step_clip_bf16];
                RnnReluBackwardStepClip: rnn_pointwise, grid_stride
                    [f32 rnn_relu_backward_step_clip, f16 rnn_relu_backward_step_clip_f16, bf16 rnn_relu_backward_step_clip_bf16];
            }
            /// `p[0..n] = value`, rounded once to the buffer's type (kernels/util.cu).
            FillArgs(n: i64, value: f32, p: u64) {
                Fill: util, grid_stride [f32 fill_f32, f16 fill_f16, bf16 fill_bf16];
            }
            /// `dst[0..n] = src[0..n]` converted: by the type of the 16-bit side.
            ConvertArgs(n: i64, src: u64, dst: u64) {
                ConvertToF32: util, grid_stride [f16 convert_f16_to_f32, bf16 convert_bf16_to_f32];
                ConvertFromF32: util, grid_stride [f16 convert_f32_to_f16, bf16 convert_f32_to_bf16];
            }
            /// `dst[b, a, :] = src[a, b, :]`: the first two axes of `[na, nb, w]` swapped (batch-first layouts).
            SwapAxesArgs(na: i32, nb: i32, w: i64, src: u64, dst: u64) {
                SwapAxes: util, grid_stride [f32 swap_axes_f32, f16 swap_axes_f16, bf16 swap_axes_bf16];
            }
            /// `dst[0..n] += src[0..n]`, both of the storage type (merge by sum).
            AddArgs(n: i64, src: u64, dst: u64) {
                Add: util, grid_stride [f32 add_f32, f16 add_f16, bf16 add_bf16];
            }
            /// `data[t, b, u] *= factor` for the `steps` steps from `first_step` (`data` points at
            /// the first one's rows): dropout between layers, the masks of the call's key and a
            /// layer's tag (kernels/dropout.cu; key words and tag passed as the bits of an `int`),
            /// or the supplied masks' bits `hits` (kernels/masks.cuh; null: drawn).
            DropoutArgs(first_step: i32, steps: i32, batch: i32, width: i32, key0: i32, key1: i32, tag: i32, bound: i64, scale: f32, data: u64,
                hits: u64, hits_step0: i32, hits_words: i32) {
                Dropout: dropout, grid_stride [f32 dropout_f32, f16 dropout_f16, bf16 dropout_bf16];
            }
            /// `out[r, u] (+)= in[r, u] · factor(r mod batch, u)`: variational dropout, one mask per
            /// sequence (recurrent and input dropout; kernels/dropout.cu), `accumulate` 0 or 1.
            VariationalDropoutArgs(rows: i32, batch: i32, width: i32, key0: i32, key1: i32, tag: i32, bound: i64, scale: f32, accumulate: i32, input: u64, out: u64,
                hits: u64, hits_words: i32) {
                VariationalDropout: dropout, grid_stride [f32 variational_dropout_f32, f16 variational_dropout_f16, bf16 variational_dropout_bf16];
            }
            /// Zoneout after a step (kernels/zoneout.cu): `state` (`[B, W]`) becomes `prev` where the
            /// mask of the key, tag and `mask_step` (the sequence's step: `step` plus a continuing
            /// stream's first) hits (`training` 1) or `z·prev + keep·state` (0), also
            /// written to `y` (or null); the cell's own state saved to `save_new` first (or null).
            ZoneoutForwardArgs(batch: i32, width: i32, step: i32, mask_step: i32, lengths: u64, key0: i32, key1: i32, tag: i32, bound: i64,
                training: i32, z: f32, keep: f32, prev: u64, state: u64, y: u64, y_stride: i32, save_new: u64, hits: u64, hits_step0: i32, hits_words: i32) {
                ZoneoutForward: zoneout, grid_stride [f32 zoneout_forward_f32, f16 zoneout_forward_f16, bf16 zoneout_forward_bf16];
            }
            /// Zoneout's backward before a step: `grad` (f32 `[B, W]`, plus `dy` or null) split into
            /// the hit units' part (`kept`, f32) and the cell's (left in `grad`).
            ZoneoutSplitArgs(batch: i32, width: i32, step: i32, mask_step: i32, lengths: u64, key0: i32, key1: i32, tag: i32, bound: i64,
                dy: u64, dy_stride: i32, grad: u64, kept: u64, hits: u64, hits_step0: i32, hits_words: i32) {
                ZoneoutSplit: zoneout, grid_stride [f32 zoneout_split_f32, f16 zoneout_split_f16, bf16 zoneout_split_bf16];
            }
            /// `dst[j] += Σ_i src[i, j]`, `src` `[rows, cols]` f32 (the peephole gradients' sum over the batch).
            AddColumnSumsArgs(rows: i32, cols: i32, src: u64, dst: u64) {
                AddColumnSums: util, grid_stride [f32 add_column_sums_f32];
            }
            /// `v = LN(v; γ, β)` per row, in place, `x̂` and `rstd` saved when given (kernels/layer_norm.cu;
            /// a block per row: launched over `rows · 256` elements).
            LayerNormForwardArgs(rows: i32, width: i32, v: u64, gamma: u64, beta: u64, xhat: u64, rstd: u64) {
                LayerNormForward: layer_norm, grid_stride
                    [f32 layer_norm_forward, f16 layer_norm_forward_f16, bf16 layer_norm_forward_bf16];
            }
            /// `dx = LNback(dy; γ, x̂, rstd)` per row (`dx` may be `dy`).
            LayerNormBackwardArgs(rows: i32, width: i32, dy: u64, gamma: u64, xhat: u64, rstd: u64, dx: u64) {
                LayerNormBackward: layer_norm, grid_stride
                    [f32 layer_norm_backward, f16 layer_norm_backward_f16, bf16 layer_norm_backward_bf16];
            }
            /// `dγ += Σ_r dy⊙x̂`, `dβ += Σ_r dy` (f32 accumulators; one thread per column, rows in order).
            LayerNormParamGradsArgs(rows: i32, width: i32, dy: u64, xhat: u64, dgamma: u64, dbeta: u64) {
                LayerNormParamGrads: layer_norm, grid_stride
                    [f32 layer_norm_param_grads, f16 layer_norm_param_grads_f16, bf16 layer_norm_param_grads_bf16];
            }
            /// The layer-normalised LSTM's `m = o⊙tanh(LN(c; γ_c, β_c))` after a step (a block per row).
            LstmLnCellForwardArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, c: u64, gamma: u64, beta: u64,
                m: u64, y: u64, y_stride: i32, c_hat: u64, rstd: u64) {
                LstmLnCellForward: layer_norm, grid_stride
                    [f32 lstm_ln_cell_forward, f16 lstm_ln_cell_forward_f16, bf16 lstm_ln_cell_forward_bf16];
            }
            /// Its backward before `lstm_backward_step_ln`: `dŝ`, `dm⊙τ` and `dc += LNback(dŝ)` (a block per row).
            LstmLnCellBackwardArgs(batch: i32, hidden: i32, step: i32, lengths: u64, gates: u64, c_hat: u64, rstd: u64,
                gamma: u64, beta: u64, dm_in: u64, dy: u64, dy_stride: i32, carry: u64, dc: u64, ds: u64, dm_tau: u64) {
                LstmLnCellBackward: layer_norm, grid_stride
                    [f32 lstm_ln_cell_backward, f16 lstm_ln_cell_backward_f16, bf16 lstm_ln_cell_backward_bf16];
            }
            /// The masked softmax of each row of `[rows, S]` over its sequence's keys (`s < lengths[r mod B]`), in
            /// place, 0 past them (kernels/attention.cu; a block per row: launched over `rows · 256` elements;
            /// `alpha` unused, null); its backward `dE = α ⊙ (dα − Σ α dα)` in place on `e` (`dα`).
            AttentionSoftmaxArgs(rows: i32, batch: i32, steps: i32, lengths: u64, alpha: u64, e: u64) {
                AttentionSoftmax: attention, grid_stride [f32 attention_softmax_f32];
                AttentionSoftmaxBackward: attention, grid_stride [f32 attention_softmax_backward_f32];
            }
            /// The concat and additive scores `e[t, b, s] = Σ_a v_a tanh(qp[t, b, a] + kp[s, b, a])`, `s < lengths[b]`.
            AttentionTanhScoreArgs(queries: i32, batch: i32, steps: i32, attn: i32, lengths: u64, qp: u64, kp: u64, v: u64, e: u64) {
                AttentionTanhScore: attention, grid_stride [f32 attention_tanh_score_f32];
            }
            /// Its backward from `de`: `_query` writes `dqp` and the per-row parts of `dv` (`dv_rows`), `_key` adds
            /// into `dkp` (each ignores the other's outputs).
            AttentionTanhScoreBackwardArgs(queries: i32, batch: i32, steps: i32, attn: i32, lengths: u64, qp: u64, kp: u64,
                v: u64, de: u64, dqp: u64, dv_rows: u64, dkp: u64) {
                AttentionTanhScoreBackwardQuery: attention, grid_stride [f32 attention_tanh_score_backward_query_f32];
                AttentionTanhScoreBackwardKey: attention, grid_stride [f32 attention_tanh_score_backward_key_f32];
            }
            /// `y = tanh(x)` (the attentional hidden state; `y` may be `x`).
            AttentionTanhArgs(n: i64, x: u64, y: u64) {
                AttentionTanh: attention, grid_stride [f32 attention_tanh_f32];
            }
            /// `dx = dy ⊙ (1 − y²)` (`dx` may be `dy`).
            AttentionTanhBackwardArgs(n: i64, dy: u64, y: u64, dx: u64) {
                AttentionTanhBackward: attention, grid_stride [f32 attention_tanh_backward_f32];
            }
            /// `dst[s, r, :] = src[s, index[r], :]` (`[S, B, W]` to `[S, R, W]`; `index` `[R]` i32 in `0..B`).
            AttentionGatherRowsArgs(steps: i32, rows: i32, batch: i32, width: i32, index: u64, src: u64, dst: u64) {
                AttentionGatherRows: attention, grid_stride [f32 attention_gather_rows_f32];
            }
            /// `dst[s, b, :] = src[s, b, :]` for `s < lengths[b]`, 0 past it (`dst` may be `src`).
            AttentionMaskRowsArgs(steps: i32, batch: i32, width: i32, lengths: u64, src: u64, dst: u64) {
                AttentionMaskRows: attention, grid_stride [f32 attention_mask_rows_f32];
            }
            /// A whole LSTM layer-direction forward in one cooperative launch (kernels/persistent_lstm.cu).
            PersistentLstmForwardArgs(batch: i32, hidden: i32, steps: i32, reverse: i32, units: i32, lengths: u64, xg: u64,
                w_hh: u64, b_ih: u64, b_hh: u64, h0: u64, c0: u64, h_states: u64, training: i32, c_save: u64,
                gates_save: u64, y: u64, y_stride: i32, hn: u64, cn: u64, barrier: u64) {
                PersistentLstmForward: persistent_lstm, persistent_device_only [f32 persistent_lstm_forward];
            }
            /// A whole GRU or RNN layer-direction forward in one cooperative launch (kernels/persistent_cell.cu).
            PersistentCellForwardArgs(batch: i32, hidden: i32, steps: i32, reverse: i32, units: i32, lengths: u64, xg: u64,
                w_hh: u64, b_ih: u64, b_hh: u64, h0: u64, h_states: u64, training: i32, gates_save: u64, extra_save: u64,
                y: u64, y_stride: i32, hn: u64, barrier: u64) {
                PersistentGruForward: persistent_cell, persistent [f32 persistent_gru_forward];
                PersistentRnnTanhForward: persistent_cell, persistent [f32 persistent_rnn_tanh_forward];
                PersistentRnnReluForward: persistent_cell, persistent [f32 persistent_rnn_relu_forward];
            }
            /// A whole layer-direction backward time loop in one cooperative launch (kernels/persistent_backward.cu).
            PersistentBackwardArgs(batch: i32, hidden: i32, steps: i32, reverse: i32, units: i32, lengths: u64, w_hh: u64,
                gates: u64, extra: u64, c_all: u64, h_all: u64, h0: u64, c0: u64, dy: u64, dy_stride: i32, carry: u64,
                dc: u64, dgi: u64, dgh: u64, barrier: u64) {
                PersistentLstmBackward: persistent_backward, persistent [f32 persistent_lstm_backward];
                PersistentGruBackward: persistent_backward, persistent [f32 persistent_gru_backward];
                PersistentRnnTanhBackward: persistent_backward, persistent [f32 persistent_rnn_tanh_backward];
                PersistentRnnReluBackward: persistent_backward, persistent [f32 persistent_rnn_relu_backward];
            }
        }
    };
}
// Used by the host emulation of the unit tests (emulation.rs) besides `define_kernels` here.
#[allow(unused_imports)]
pub(crate) use registry;

/// The storage type named in the table.
macro_rules! storage_type {
    (f32) => {
        Dtype::F32
    };
    (f16) => {
        Dtype::F16
    };
    (bf16) => {
        Dtype::BF16
    };
}
#[allow(unused_imports)]
pub(crate) use storage_type;

/// Whether a kind of the table is a persistent kernel.
macro_rules! is_persistent {
    (grid_stride) => {
        false
    };
    (persistent) => {
        true
    };
    (persistent_device_only) => {
        true
    };
}

/// The production items of the table: [`KernelId`], the argument structs, the typed handles.
macro_rules! define_kernels {
    ($(
        $(#[$sig_doc:meta])*
        $Sig:ident ($($arg:ident : $ty:ty),* $(,)?) {
            $( $k:ident : $file:ident, $kind:ident [$($dt:ident $entry:ident),* $(,)?]; )*
        }
    )*) => {
        /// Every kernel of `kernels/*.cu` (each with one entry per storage type it has).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum KernelId {
            $($($k,)*)*
        }

        impl KernelId {
            /// Every kernel, in the table's order.
            pub const ALL: &'static [KernelId] = &[$($(KernelId::$k,)*)*];

            /// Its file in `kernels/`, without `.cu`.
            pub fn file(self) -> &'static str {
                match self {
                    $($(KernelId::$k => stringify!($file),)*)*
                }
            }

            /// Its entry for storage type `ty`, if it has one.
            pub fn entry(self, ty: Dtype) -> Option<&'static str> {
                match self {
                    $($(KernelId::$k => {
                        $(if ty == storage_type!($dt) {
                            return Some(stringify!($entry));
                        })*
                        None
                    })*)*
                }
            }

            /// A persistent kernel: a cooperative launch with opted-in dynamic shared memory.
            pub fn persistent(self) -> bool {
                match self {
                    $($(KernelId::$k => is_persistent!($kind),)*)*
                }
            }
        }

        $(
            $(#[$sig_doc])*
            ///
            /// The arguments in the order of the C signature (device pointers as addresses, 0 for
            /// null).
            #[derive(Debug, Clone, Copy)]
            pub(crate) struct $Sig {
                $(pub $arg: $ty,)*
            }

            impl KernelArgs for $Sig {
                fn push<'a>(&'a self, launch: &mut cudarc::driver::LaunchArgs<'a>) {
                    use cudarc::driver::PushKernelArg;
                    $(launch.arg(&self.$arg);)*
                }
            }

            $(
                #[allow(non_upper_case_globals)]
                #[doc = concat!("`", stringify!($k), "`: ", $(stringify!($entry), " "),*, "in `kernels/", stringify!($file), ".cu`.")]
                pub(crate) const $k: Kernel<$Sig> = Kernel::new(KernelId::$k);
            )*
        )*
    };
}

registry!(define_kernels);

/// The arguments of a kernel's launch: one of the structs the registry generates (`Any`, so
/// that the host emulation can read the fields of the kernel's own struct).
pub(crate) trait KernelArgs: Any {
    /// Pushes every argument, in the C signature's order, onto a device launch.
    fn push<'a>(&'a self, launch: &mut cudarc::driver::LaunchArgs<'a>);
}

/// A kernel whose launch takes arguments `A`: the typed handle the driver launches.
pub(crate) struct Kernel<A> {
    pub id: KernelId,
    args: PhantomData<fn(A)>,
}

impl<A> Kernel<A> {
    const fn new(id: KernelId) -> Self {
        Kernel { id, args: PhantomData }
    }
}

impl<A> Clone for Kernel<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for Kernel<A> {}

/// The largest batch the persistent kernels take (`PERSISTENT_MAX_BATCH` of
/// kernels/persistent_lstm.cu and kernels/persistent_cell.cu).
pub(crate) const PERSISTENT_MAX_BATCH: usize = 8;
/// Threads per block of the persistent kernels (their `__launch_bounds__`).
pub(crate) const PERSISTENT_THREADS: u32 = 256;

/// Dynamic shared memory of the persistent LSTM kernel with `u` units per block, in bytes.
pub(crate) fn persistent_smem(h: usize, b: usize, u: usize) -> usize {
    4 * (4 * u * h + b * h + 4 * b * u + b * u)
}

/// Dynamic shared memory of the persistent GRU (`g = 3`) or RNN (`g = 1`) kernel with `u` units
/// per block, in bytes: the `W_hh` slice `[U, G, H]` and `h_prev` `[B, H]`
/// (`persistent_cell_smem_floats` of kernels/persistent_cell.cu).
pub(crate) fn persistent_cell_smem(g: usize, h: usize, b: usize, u: usize) -> usize {
    4 * (u * g * h + b * h)
}

/// Dynamic shared memory of the persistent backward kernel of a cell with `g` gates and `u` units
/// per block, in bytes: the `W_hh` columns `[U, G·H]`, a `dG_h` chunk `[B, H]` and three `[B, U]`
/// carries (`persistent_backward_smem_floats` of kernels/persistent_backward.cu).
pub(crate) fn persistent_backward_smem(g: usize, h: usize, b: usize, u: usize) -> usize {
    4 * (u * g * h + b * h + 3 * b * u)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry the registry names is an `extern "C" __global__` entry of its file (the
    /// RNNK_INSTANTIATE entries by their macro's name), and every entry of the files is in the
    /// registry: the table and the `.cu` files cannot drift apart.
    #[test]
    fn registry_matches_the_cu_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut named = Vec::new();
        for &k in KernelId::ALL {
            let text = std::fs::read_to_string(dir.join(format!("{}.cu", k.file()))).unwrap();
            for ty in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                let Some(entry) = k.entry(ty) else { continue };
                let base = entry.trim_end_matches("_bf16").trim_end_matches("_f16");
                let instantiated = text.contains(&format!(", {base})"));
                let direct = text.contains(&format!(" {entry}(")) || text.contains(&format!("({entry},"));
                assert!(instantiated || direct, "{k:?}: {entry} is not an entry of kernels/{}.cu", k.file());
                named.push(entry.to_string());
            }
        }
        for file in [
            "lstm_pointwise",
            "gru_pointwise",
            "gru_reset_before",
            "rnn_pointwise",
            "util",
            "layer_norm",
            "persistent_lstm",
            "persistent_cell",
            "persistent_backward",
        ] {
            let text = std::fs::read_to_string(dir.join(format!("{file}.cu"))).unwrap();
            for line in text.lines() {
                let Some(rest) = line.strip_prefix("RNNK_INSTANTIATE(") else { continue };
                let base = rest.split(", ").nth(1).unwrap().trim_end_matches(')');
                for e in [base.to_string(), format!("{base}_f16"), format!("{base}_bf16")] {
                    assert!(named.contains(&e), "kernels/{file}.cu: {e} is not in the registry");
                }
            }
        }
        assert!(KernelId::ALL.iter().filter(|k| k.persistent()).count() == 8);
    }

    /// Every entry the device loads is an entry of the PTX of the file the registry names, so
    /// `Cuda::new` finds them all.
    #[cfg(rnn_kernels_ptx)]
    #[test]
    fn registry_entries_are_in_the_ptx() {
        for &k in KernelId::ALL {
            let text = super::super::ptx::FILES.iter().find(|(f, _)| *f == k.file()).map(|(_, t)| *t).unwrap();
            for ty in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                let Some(entry) = k.entry(ty) else { continue };
                assert!(text.contains(&format!(".entry {entry}(")), "{k:?}: {entry} is not in kernels/{}.cu's PTX", k.file());
            }
        }
    }
}
