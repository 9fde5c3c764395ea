/*
 * rnn_kernels.h: the C ABI of rnn-kernels (RNN, LSTM, GRU stacks; inference and training with
 * full backpropagation through time; PyTorch-compatible parameters).
 *
 * Build:  cargo build --release -p rnn-kernels-capi    [--features cuda]
 * Link:   cc app.c -Iinclude -Ltarget/release -lrnn_kernels          (the shared library), or
 *         cc app.c -Iinclude target/release/librnn_kernels.a -lpthread -ldl -lm   (static)
 *
 * Written by hand; capi/tests/header.rs checks every prototype and status value below against
 * the Rust source (capi/src), so the two cannot drift apart.
 *
 * CONVENTIONS (as in the Rust crate docs)
 *   - Every tensor is a dense, row-major array of float (the rightmost dimension changes
 *     fastest), time-major, in host memory:
 *       x  [T, B, I]        y  [T, B, D*Hout]
 *       h0, hn  [L*D, B, Hout]      c0, cn  [L*D, B, H]   (LSTM only; index layer*D + direction)
 *     T steps, B batch, I input size, H hidden size, L layers, D = 2 if bidirectional else 1,
 *     Hout = proj_size if set, else H. A bidirectional output is the forward direction's Hout
 *     features, then the reverse direction's.
 *   - Parameters: one flat float buffer, the tensors of PyTorch's state_dict() in its order
 *     (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, [weight_hr_l0], then *_reverse, then
 *     layer 1, ...), each row-major. Gate order: LSTM i, f, g, o; GRU r, z, n (as PyTorch).
 *   - Every pointer comes with its length IN ELEMENTS (name_len), checked against the model's
 *     configuration and the call's shape. A wrong length is RNNK_ERR_SIZE_MISMATCH, with a
 *     message naming the argument, the expected shape and element count, and the given count.
 *   - Optional buffers are marked "optional": NULL means zeros (inputs) or "not wanted"
 *     (outputs), and its length is then ignored. Every other pointer must be non-NULL.
 *   - An output buffer must not share memory with any other buffer of the same call: an input,
 *     the `lengths` array, or another output (the out-pointers of rnnk_model_tensor_sizes too).
 *     Inputs may overlap each other. An overlap is RNNK_ERR_INVALID_ARGUMENT naming both buffers,
 *     found from the pointers and lengths before any buffer is read or written.
 *   - Every length is checked before its buffer is read or written: a wrong length is an error
 *     and the buffer is not touched.
 *   - Cell options (rnnk_model_create_ex; see CELL OPTIONS) change these shapes: with
 *     batch_first, x is [B, T, I] and y [B, T, *] (states stay [L*D, B, *]); with merge=sum,
 *     y is [T, B, Hout] and each upper layer's input Hout; with direction=reverse, D = 1 and the
 *     parameter names are unsuffixed; with peephole, each layer-direction's tensors end with
 *     weight_peephole_l{k}[_reverse] [3, H] (rows i, f, o). rnnk_model_tensor_sizes and
 *     rnnk_model_param_count count them.
 *   - Variable lengths: `lengths` is NULL (every sequence has `steps` steps) or `batch` int64
 *     lengths in 1..=steps, in any order: PyTorch's packed-sequence semantics (outputs past a
 *     length are zero, final states are each sequence's last valid step, the reverse direction
 *     starts at each sequence's own end).
 *
 * CELL OPTIONS
 *   rnnk_model_create_ex takes the options of ONNX's, Keras's and Haste's cells as a string of
 *   comma-separated key=value items (spaces ignored; NULL or "" for none; each key at most once;
 *   a boolean key alone means =true), with the keys of the case files (docs/case-format.md):
 *     direction=forward|reverse|bidirectional   ONNX `direction`; bidirectional = 1 allows only
 *                                               `bidirectional` (or no direction key)
 *     merge=concat|sum                          Keras `merge_mode` (bidirectional only)
 *     peephole=true|false                       LSTM, ONNX `P`
 *     gate_clip=X                               ONNX `clip` (X >= 0, finite; 0 = none); any cell
 *     input_forget=true|false                   LSTM, ONNX `input_forget`
 *     linear_before_reset=true|false            GRU; false = Cho et al. 2014, ONNX 0, Keras reset_after=False
 *     layer_norm=true|false                     LSTM, GRU; Haste's LayerNormLSTM/LayerNormGRU (tensors
 *                                               weight_ln_ih/_hh_l{k}, LSTM also weight_ln_c/bias_ln_c_l{k})
 *     batch_first=true|false                    PyTorch `batch_first`
 *     dropout=P                                 PyTorch `dropout` (P in [0, 1)): in training, the output of
 *                                               every layer but the last dropped with probability P, kept
 *                                               values scaled by 1/(1-P); the masks from rnnk_forward_training_masked's
 *                                               seed and offset (on device buffers:
 *                                               rnnk_forward_training_masked_device); inference ignores it
 *     zoneout=Z                                 Krueger et al. / Haste `zoneout` (Z in [0, 1)): in training,
 *                                               each unit of the new hidden state keeps its previous value
 *                                               with probability Z, per step (masks as for dropout); in
 *                                               inference h = Z*h_prev + (1-Z)*h_new
 *     zoneout_cell=Z                            LSTM: the same on the cell state c
 *     recurrent_dropout=P                       Keras `recurrent_dropout` (P in [0, 1); Gal & Ghahramani): in
 *                                               training, the h entering the recurrent product dropped with
 *                                               one mask per sequence for all steps; not with
 *                                               linear_before_reset=false; inference ignores it
 *     input_dropout=P                           Keras `dropout` of a recurrent layer (P in [0, 1); Gal &
 *                                               Ghahramani): in training, every layer's input dropped with
 *                                               one mask per sequence, layer and direction for all steps;
 *                                               inference ignores it
 *   A malformed item, an unknown key or a value the cell does not take is
 *   RNNK_ERR_INVALID_ARGUMENT naming the key; an option the chosen backend does not implement is
 *   RNNK_ERR_UNSUPPORTED naming the backend and the option (the "reference" backend implements
 *   every option). rnnk_model_options returns a model's options in the same form.
 *
 * ERRORS
 *   Every function but rnnk_last_error and rnnk_version returns an int status: RNNK_OK (0) or
 *   one of the RNNK_ERR_* codes below. rnnk_last_error() then returns a message for the last
 *   call on the calling thread ("" after a success), valid until the next call into this
 *   library on that thread. Bad arguments, NULL pointers, wrong lengths and wrong handles (freed,
 *   never created, of the other kind, a reserve of another model) are reported, never crash;
 *   a model whose memory cannot be allocated is RNNK_ERR_OUT_OF_MEMORY, never an abort. A
 *   panic inside the library (a bug) is caught and returned as RNNK_ERR_PANIC. A length larger
 *   than the memory behind its pointer cannot be detected: that is the caller's contract.
 *
 * THREADS
 *   Every function may be called from any thread, on any handle, concurrently: no combination of
 *   calls is a data race. Calls that only read a model (rnnk_forward, rnnk_forward_training,
 *   rnnk_backward and their *_device forms, rnnk_model_get_params[_device],
 *   rnnk_model_save_safetensors, rnnk_model_param_count, rnnk_model_tensor_sizes) run
 *   concurrently on one model from any number of threads; their results are bit-identical to
 *   the same calls made one at a time. Calls that change or free a model
 *   (rnnk_model_init_uniform, rnnk_model_set_params[_device], rnnk_model_load_safetensors,
 *   rnnk_model_free) need it alone: while any other call uses the model they return
 *   RNNK_ERR_BUSY at once, having done nothing, and while one of them runs every other call on
 *   that model returns RNNK_ERR_BUSY. Likewise for a reserve: rnnk_forward_training[_device]
 *   and rnnk_reserve_free need it alone, rnnk_backward[_device] calls share it. No call waits
 *   for another; a caller that mixes them serialises them itself (or retries on RNNK_ERR_BUSY).
 *   The decoder-step and attention handles follow the same rules (see DECODER STEPS and
 *   ATTENTION for which calls need them alone).
 *   The "cpu" backend runs each call on its own thread pool of `threads` threads; its results
 *   are bit-identical for any thread count.
 *
 * CUDA
 *   With --features cuda the backend "cuda" is available. The functions above take HOST pointers
 *   on it too (each call uploads its inputs and downloads its outputs, and returns when they are
 *   written; the weights and the reserve stay on the device).
 *
 *   The *_device functions take DEVICE pointers instead, for a model on "cuda", like cuDNN:
 *   - Every float buffer (x, h0, c0, y, hn, cn; dy, dhn, dcn, dx, dh0, dc0, dparams; params) is
 *     device memory of the model's device (device 0, or RNN_KERNELS_CUDA_DEVICE), usable in its
 *     primary context (the CUDA runtime's): cudaMalloc, cudaMallocAsync, cuMemAlloc, managed
 *     memory, a PyTorch CUDA tensor's data_ptr(). A CUdeviceptr is passed as
 *     (float*)(uintptr_t)dptr. Same shapes, lengths, NULL and overlap rules as the host
 *     functions. A pointer the CUDA driver does not know as memory of that device (a host
 *     pointer, freed memory) is RNNK_ERR_INVALID_ARGUMENT naming the argument; a length larger
 *     than the allocation cannot be detected. The library never frees these buffers.
 *   - `lengths` stays a HOST int64 array (as cuDNN's seqLengthArray): the library plans its
 *     loops from it.
 *   - `stream` is the caller's CUstream / cudaStream_t of that context; NULL means the legacy
 *     default stream (pass cudaStreamPerThread / CU_STREAM_PER_THREAD explicitly for the
 *     per-thread one). The library computes on its own two streams: the call's work starts
 *     after all work enqueued on `stream` before the call (an event recorded on `stream` that
 *     the library's stream waits for), and work enqueued on `stream` after the call starts
 *     after the call's work (an event recorded on the library's stream that `stream` waits
 *     for), also when the call returns an error after enqueuing work. No host synchronisation
 *     otherwise: rnnk_forward_device, rnnk_forward_training_device, rnnk_backward_device and
 *     rnnk_model_get_params_device return once the work is enqueued (results are in memory
 *     for the caller's work on `stream`, or after cudaStreamSynchronize(stream)).
 *     rnnk_model_set_params_device returns after the parameters were read (it synchronises).
 *   - Reusing and freeing: every buffer may be freed or rewritten by work enqueued on `stream`
 *     after the call (cudaFreeAsync(p, stream), a kernel on `stream`, PyTorch's caching
 *     allocator on the tensor's stream), or by anything after cudaStreamSynchronize(stream) or
 *     cudaDeviceSynchronize(); not by other streams or the host before that. Nothing of the
 *     caller's is used after the call's work: rnnk_forward_training_device copies x, h0 and c0
 *     into the reserve, which stays on the device.
 *   - Checks: every argument is checked as for the host functions first (in every build and
 *     on every backend, so the same mistakes give the same messages); then a model that is not
 *     on "cuda" is RNNK_ERR_INVALID_ARGUMENT naming `model`, and in a library built without
 *     the cuda feature RNNK_ERR_BACKEND_UNAVAILABLE. A stream of another context is
 *     RNNK_ERR_INVALID_ARGUMENT naming `stream`. Nothing is enqueued for a call these checks reject.
 *   - Reserves are shared with the host functions: a reserve filled by
 *     rnnk_forward_training_device can be read by rnnk_backward, and one filled by
 *     rnnk_forward_training (on a "cuda" model) by rnnk_backward_device. A call on one model
 *     from several threads at once is allowed as for the host functions (they are serialised on
 *     the device).
 */
#ifndef RNN_KERNELS_H
#define RNN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes returned by every function. */
typedef enum rnnk_status {
    RNNK_OK = 0,
    RNNK_ERR_NULL_POINTER = 1,        /* a pointer that must not be NULL was NULL */
    RNNK_ERR_INVALID_ARGUMENT = 2,    /* a value out of range: size, cell/backend name, length, non-UTF-8 text, overlap */
    RNNK_ERR_SIZE_MISMATCH = 3,       /* a buffer length does not match the configuration and shape */
    RNNK_ERR_WRONG_HANDLE = 4,        /* not a live handle of that kind; a reserve, run or memory of another model/attention, a memory of old parameters */
    RNNK_ERR_BACKEND_UNAVAILABLE = 5, /* backend not in this build or not on this machine */
    RNNK_ERR_IO = 6,                  /* reading or writing a file failed (e.g. no such file) */
    RNNK_ERR_FILE_FORMAT = 7,         /* a file's content: not safetensors; missing/unexpected tensor; wrong shape or dtype */
    RNNK_ERR_DEVICE = 8,              /* a CUDA driver or cuBLAS call failed */
    RNNK_ERR_PANIC = 9,               /* internal error (a bug), caught at the boundary */
    RNNK_ERR_OUT_OF_MEMORY = 10,      /* the memory the arguments (or a file) ask for cannot be allocated; nothing changed */
    RNNK_ERR_BUSY = 11,               /* the handle is in use by a conflicting call on another thread (see THREADS); nothing done */
    RNNK_ERR_UNSUPPORTED = 12         /* the backend does not implement a cell option the model sets (named); nothing created */
} rnnk_status;

/* A layer stack: configuration, parameters, backend, and the weights packed for it. */
typedef struct rnnk_model rnnk_model;
/* The activations a training forward keeps for backward; reusable across calls. */
typedef struct rnnk_reserve rnnk_reserve;
/* A decoder run one step at a time on a model (see DECODER STEPS). */
typedef struct rnnk_steps rnnk_steps;
/* The backward of a training run of rnnk_steps, one step at a time from the last. */
typedef struct rnnk_steps_backward rnnk_steps_backward;
/* An attention: score, sizes, flat parameters and host backend (see ATTENTION). */
typedef struct rnnk_attention rnnk_attention;
/* The keys' side of an attention over one batch of encoder outputs, with the gradients the
 * backward calls accumulate into it. */
typedef struct rnnk_attention_memory rnnk_attention_memory;

/* The message of the last call on this thread ("" after success). Never NULL. */
const char* rnnk_last_error(void);

/* The library version, e.g. "0.1.0". Never NULL. */
const char* rnnk_version(void);

/* Creates a model, as torch.nn.LSTM/GRU/RNN(input_size, hidden_size, num_layers, bias,
 * batch_first=False, bidirectional, proj_size) would: `cell` is "lstm", "gru", "rnn_tanh" or
 * "rnn_relu"; `bidirectional` and `bias` are 0 or 1; `proj_size` 0 for none (LSTM only).
 * Parameters start uniform in +-1/sqrt(H) (seed 0). `backend` is "reference", "cpu" or "cuda";
 * `threads` is the cpu backend's thread count (0: one per core) and is ignored by the others.
 * On success *out is the new model (free it with rnnk_model_free); on failure *out is NULL.
 * Sizes whose model cannot be allocated (its parameters, the backend's packed copy) are
 * RNNK_ERR_OUT_OF_MEMORY naming input_size, hidden_size and num_layers, checked before anything
 * is allocated. */
int rnnk_model_create(const char* cell, size_t input_size, size_t hidden_size, size_t num_layers, int bidirectional,
                      size_t proj_size, int bias, const char* backend, size_t threads, rnnk_model** out);

/* As rnnk_model_create, with the cell options of `options` (optional: NULL or "" for none; see
 * CELL OPTIONS), e.g. "peephole,gate_clip=3" (LSTM), "linear_before_reset=false" (GRU),
 * "direction=reverse". RNNK_ERR_INVALID_ARGUMENT naming the key for a bad item;
 * RNNK_ERR_UNSUPPORTED when `backend` does not implement an option. *out is NULL on failure. */
int rnnk_model_create_ex(const char* cell, size_t input_size, size_t hidden_size, size_t num_layers, int bidirectional,
                         size_t proj_size, int bias, const char* options, const char* backend, size_t threads, rnnk_model** out);

/* The model's cell options as rnnk_model_create_ex takes them (the non-default ones, e.g.
 * "direction=reverse,peephole=true,gate_clip=3"; "" for none; a bidirectional model's direction is its `bidirectional` argument, not in the
 * string: the string with bidirectional = 1 makes it again), NUL-terminated in buf [buf_len]
 * bytes. *len (optional) gets the string's length without the NUL, also when buf is too small:
 * then RNNK_ERR_SIZE_MISMATCH naming `buf`, and buf is untouched. buf may be NULL with buf_len 0
 * to ask for the length only. */
int rnnk_model_options(const rnnk_model* model, char* buf, size_t buf_len, size_t* len);

/* Frees a model. NULL is a no-op. */
int rnnk_model_free(rnnk_model* model);

/* *out = the number of parameters (floats in the flat layout). */
int rnnk_model_param_count(const rnnk_model* model, size_t* out);

/* The element counts of x, y, h0/hn and c0/cn (0 without a cell state) for steps x batch. Each
 * output pointer is optional. steps x batch above PTRDIFF_MAX, or a count that does not fit a
 * size_t, is RNNK_ERR_INVALID_ARGUMENT. */
int rnnk_model_tensor_sizes(const rnnk_model* model, size_t steps, size_t batch, size_t* x_len, size_t* y_len, size_t* h_len,
                            size_t* c_len);

/* Re-initialises the parameters uniform in +-1/sqrt(H) from `seed`. */
int rnnk_model_init_uniform(rnnk_model* model, uint64_t seed);

/* Sets the parameters from the flat layout: params [param_count]. */
int rnnk_model_set_params(rnnk_model* model, const float* params, size_t params_len);

/* Copies the parameters in the flat layout into params [param_count]. */
int rnnk_model_get_params(const rnnk_model* model, float* params, size_t params_len);

/* Loads the parameters from a safetensors file of a state_dict() (f32, f64, f16 or bf16), names
 * with `prefix` (optional: NULL or "" for none, "rnn." for a submodule). Strict like
 * load_state_dict unless `allow_unexpected` is non-zero (then other tensors are ignored).
 * RNNK_ERR_IO if the file cannot be read; RNNK_ERR_FILE_FORMAT for anything wrong with its
 * content (not safetensors, a missing or unexpected tensor, a wrong shape or dtype, another
 * cell's or configuration's tensors); the model's parameters are unchanged after an error. */
int rnnk_model_load_safetensors(rnnk_model* model, const char* path, const char* prefix, int allow_unexpected);

/* Saves the parameters as safetensors (PyTorch names, f32, the configuration in the metadata). */
int rnnk_model_save_safetensors(const rnnk_model* model, const char* path);

/* Creates an empty reserve. Free it with rnnk_reserve_free. */
int rnnk_reserve_create(rnnk_reserve** out);

/* Frees a reserve. NULL is a no-op. */
int rnnk_reserve_free(rnnk_reserve* reserve);

/* Forward inference; keeps nothing.
 *   lengths [batch] optional int64;  x [T, B, I];  h0 [L*D, B, Hout] optional;  c0 [L*D, B, H] optional (LSTM only)
 *   y [T, B, D*Hout];  hn [L*D, B, Hout] optional;  cn [L*D, B, H] optional (LSTM only) */
int rnnk_forward(const rnnk_model* model, size_t steps, size_t batch, const int64_t* lengths, size_t lengths_len, const float* x,
                 size_t x_len, const float* h0, size_t h0_len, const float* c0, size_t c0_len, float* y, size_t y_len, float* hn,
                 size_t hn_len, float* cn, size_t cn_len);

/* Forward for training: as rnnk_forward, and fills `reserve` (replacing what it held) with what
 * rnnk_backward needs, including copies of x, h0 and c0. */
int rnnk_forward_training(const rnnk_model* model, rnnk_reserve* reserve, size_t steps, size_t batch, const int64_t* lengths,
                          size_t lengths_len, const float* x, size_t x_len, const float* h0, size_t h0_len, const float* c0,
                          size_t c0_len, float* y, size_t y_len, float* hn, size_t hn_len, float* cn, size_t cn_len);

/* Forward for training with the dropout and zoneout masks drawn from (mask_seed, mask_offset): as
 * rnnk_forward_training, which refuses a model with the `dropout`, `zoneout`, `zoneout_cell`,
 * `recurrent_dropout` or `input_dropout` option (RNNK_ERR_INVALID_ARGUMENT naming `masks`). The same seed and offset
 * give the same masks on every backend and thread count, and rnnk_backward regenerates them; a training loop keeps the seed and passes a new
 * offset per call. Without those options the masks are not used. */
int rnnk_forward_training_masked(const rnnk_model* model, rnnk_reserve* reserve, uint64_t mask_seed, uint64_t mask_offset, size_t steps,
                                 size_t batch, const int64_t* lengths, size_t lengths_len, const float* x, size_t x_len, const float* h0,
                                 size_t h0_len, const float* c0, size_t c0_len, float* y, size_t y_len, float* hn, size_t hn_len, float* cn,
                                 size_t cn_len);

/* The masks a training call of `model` with steps x batch reads, 6 numbers each, in the order
 * rnnk_forward_training_with_masks and rnnk_masks_read lay them out: layer, direction (0
 * forward, 1 reverse), kind (0 dropout of a layer's output, 1 recurrent dropout, 2 input
 * dropout, 3 zoneout of h, 4 zoneout of c), steps (1 for kinds 1 and 2), rows (= batch) and
 * units. *count (when not NULL) gets the number of masks; out (NULL with out_len 0 to ask only
 * the count) gets 6 * count numbers, out_len being at least that. */
int rnnk_mask_layout(const rnnk_model* model, size_t steps, size_t batch, size_t* out, size_t out_len, size_t* count);

/* Reads back the masks a training call of `model` with steps x batch draws from (mask_seed,
 * mask_offset): writes into `hits` (hits_len bytes, exactly the sum of steps * rows * units over
 * rnnk_mask_layout) 1 where the unit is hit, 0 elsewhere, each mask [steps, rows, units] in the
 * layout's order. */
int rnnk_masks_read(const rnnk_model* model, size_t steps, size_t batch, uint64_t mask_seed, uint64_t mask_offset, uint8_t* hits,
                    size_t hits_len);

/* Forward for training with the caller's masks instead of drawn ones (to reproduce another
 * framework's, or masks read back with rnnk_masks_read): `hits` holds hits_len bytes, each mask
 * of rnnk_mask_layout in its order, [steps, rows, units], nonzero where the unit is hit
 * (dropped; for zoneout, kept at its previous value); kept units are scaled by 1/(1-p) of the
 * model's options. Otherwise as rnnk_forward_training_masked, on every backend (cuda uploads
 * the bits the call reads). */
int rnnk_forward_training_with_masks(const rnnk_model* model, rnnk_reserve* reserve, const uint8_t* hits, size_t hits_len, size_t steps,
                                     size_t batch, const int64_t* lengths, size_t lengths_len, const float* x, size_t x_len,
                                     const float* h0, size_t h0_len, const float* c0, size_t c0_len, float* y, size_t y_len, float* hn,
                                     size_t hn_len, float* cn, size_t cn_len);

/* Backpropagation through time over the call that filled `reserve` (the same model, parameters
 * unchanged since: otherwise RNNK_ERR_WRONG_HANDLE).
 *   dy [T, B, D*Hout], dhn [L*D, B, Hout], dcn [L*D, B, H]: optional (NULL: zeros)
 *   dx [T, B, I], dh0 [L*D, B, Hout], dc0 [L*D, B, H], dparams [param_count]: optional (NULL: skipped)
 * dx, dh0, dc0 are overwritten; dparams is overwritten, or added to if `accumulate` is non-zero
 * (gradient accumulation, truncated BPTT). */
int rnnk_backward(const rnnk_model* model, const rnnk_reserve* reserve, const float* dy, size_t dy_len, const float* dhn,
                  size_t dhn_len, const float* dcn, size_t dcn_len, float* dx, size_t dx_len, float* dh0, size_t dh0_len,
                  float* dc0, size_t dc0_len, float* dparams, size_t dparams_len, int accumulate);

/* ---- DECODER STEPS ----
 * A stack run one step at a time, for a decoder whose input at step t is computed from what
 * came out of the steps before it (input feeding, attention, sampling): the Rust API's
 * Rnn::start_steps, Rnn::step and Rnn::backward_steps, with the same results bit for bit.
 * The model must be unidirectional (a bidirectional or direction=reverse model is
 * RNNK_ERR_INVALID_ARGUMENT naming `direction`); in training, dropout between layers and
 * zoneout are refused (RNNK_ERR_UNSUPPORTED naming the option). Shapes, with B the run's batch
 * (rnnk_steps_info), L layers:
 *   h0, dhn, h, dh0 [L, B, Hout]    c0, dcn, c, dc0 [L, B, H] (LSTM only: NULL for GRU and RNN)
 *   x, dx (one step) [B, I]         y, dy (one step) [B, Hout]
 * A run belongs to the model that started it (another model is RNNK_ERR_WRONG_HANDLE). A run
 * that a backward walk holds takes no more steps (RNNK_ERR_INVALID_ARGUMENT naming `steps`: free
 * the walk first); a walk keeps its run alive, so the run may be freed before the walk.
 * A beam search reorders an inference run's state between steps by the hypotheses' parents
 * (rnnk_steps_reorder: B may grow from the sequences to their hypotheses, or shrink as they
 * finish) and attends over a memory of the hypotheses' sequences (rnnk_attention_memory_gather).
 * THREADS: rnnk_steps_step, rnnk_steps_reorder and rnnk_steps_free need the run alone; rnnk_steps_backward_step,
 * _finish and _free need the walk alone; the other calls share them. */

/* Starts a run of `batch` sequences on `model` from h0 [L, B, Hout] and c0 [L, B, H] (both
 * optional: zeros). With `training` non-zero each step keeps what backward needs. *out is the
 * new run (free it with rnnk_steps_free); NULL on failure. */
int rnnk_steps_start(const rnnk_model* model, size_t batch, const float* h0, size_t h0_len, const float* c0, size_t c0_len,
                     int training, rnnk_steps** out);

/* As rnnk_steps_start with training, and the recurrent_dropout and input_dropout masks drawn
 * from (mask_seed, mask_offset) as rnnk_forward_training_masked draws them (one mask per
 * sequence, the same at every step). */
int rnnk_steps_start_masked(const rnnk_model* model, uint64_t mask_seed, uint64_t mask_offset, size_t batch, const float* h0,
                            size_t h0_len, const float* c0, size_t c0_len, rnnk_steps** out);

/* Frees a run. NULL is a no-op. */
int rnnk_steps_free(rnnk_steps* steps);

/* One step of the run on `model` (the model that started it): x [B, I] in, y [B, Hout] out;
 * the run's state moves on. On an error the state is unchanged and y untouched. */
int rnnk_steps_step(const rnnk_model* model, rnnk_steps* steps, const float* x, size_t x_len, float* y, size_t y_len);

/* The run's sizes, each output optional: *count the steps taken, *batch its B, *h_len and
 * *c_len the element counts of its states (c_len 0 without a cell state). */
int rnnk_steps_info(const rnnk_steps* steps, size_t* count, size_t* batch, size_t* h_len, size_t* c_len);

/* Copies the state after the last step (h0, c0 before the first): h [L, B, Hout] and
 * c [L, B, H] (LSTM only), both optional. */
int rnnk_steps_state(const rnnk_steps* steps, float* h, size_t h_len, float* c, size_t c_len);

/* Reorders an inference run's state for a beam search: for every layer, row i of the new
 * h [L, B', Hout] (and c [L, B', H], LSTM) is row rows[i] of the current one, with
 * rows [B'] int64 (rows_len = B' >= 1, the run's new B: the next step's x and y have B' rows;
 * repeats allowed), each in 0..B. The Rust API's Steps::state_mut with each layer's rows
 * gathered (rnn_kernels_nn::decode::reorder_rows). NULL rows is RNNK_ERR_NULL_POINTER,
 * rows_len 0 or an index out of range RNNK_ERR_INVALID_ARGUMENT naming `rows_len` or
 * `rows[i]` with the bound; a training run (its backward does not go through a reorder) is
 * RNNK_ERR_INVALID_ARGUMENT naming `steps`. On an error the state is unchanged. */
int rnnk_steps_reorder(rnnk_steps* steps, const int64_t* rows, size_t rows_len);

/* Starts the backward of a training run with at least one step (an inference run, or one
 * without a step, is RNNK_ERR_INVALID_ARGUMENT naming `steps`): dhn [L, B, Hout] and
 * dcn [L, B, H] (LSTM), the gradients w.r.t. the state after the last step, optional (zeros).
 * *out is the new walk (free it with rnnk_steps_backward_free); NULL on failure. */
int rnnk_steps_backward_start(const rnnk_model* model, const rnnk_steps* steps, const float* dhn, size_t dhn_len, const float* dcn,
                              size_t dcn_len, rnnk_steps_backward** out);

/* Walks back through the next step (the last one first): dy [B, Hout] optional (zeros), the
 * gradient w.r.t. that step's output, which may depend on the dx of the step after it; dx [B, I]
 * optional (skipped), w.r.t. its input. Walking the first step (the last walked) also computes the
 * parameters' gradients (on the reference and CPU backends each weight's as one product over all
 * the steps, as a call over the whole sequence does; CUDA adds each step's). Once every step was
 * walked back, RNNK_ERR_INVALID_ARGUMENT naming `backward`. */
int rnnk_steps_backward_step(const rnnk_model* model, rnnk_steps_backward* backward, const float* dy, size_t dy_len, float* dx,
                             size_t dx_len);

/* Finishes a walk that went back through every step (otherwise RNNK_ERR_INVALID_ARGUMENT naming
 * `backward`, nothing written), each output optional (NULL: skipped):
 *   dx [T, B, I] (every step's, in step order; T = the run's steps), dh0 [L, B, Hout],
 *   dc0 [L, B, H] (LSTM only), dparams [param_count]
 * dparams is in the flat layout of rnnk_backward, overwritten, or added to if `accumulate` is
 * non-zero. A finished walk takes no more calls but rnnk_steps_backward_free. */
int rnnk_steps_backward_finish(const rnnk_model* model, rnnk_steps_backward* backward, float* dx, size_t dx_len, float* dh0,
                               size_t dh0_len, float* dc0, size_t dc0_len, float* dparams, size_t dparams_len, int accumulate);

/* Frees a walk. NULL is a no-op. */
int rnnk_steps_backward_free(rnnk_steps_backward* backward);

/* ---- ATTENTION ----
 * Attention of a decoder over an encoder's outputs (the Rust API's rnn_kernels::attention, on
 * the "reference" and "cpu" backends; bit for bit the same results). S encoder steps, B
 * sequences, Tq queries, Hq query size, Hk key size, A attn size, O output size (0: none):
 *   keys, d_keys [S, B, Hk]   lengths [B] int64 in 1..=S (optional: all S)
 *   queries, d_queries [Tq, B, Hq]
 *   weights, d_weights [Tq, B, S] (softmax over s < lengths[b], 0 past it)
 *   context, d_context [Tq, B, Hk]     hidden, d_hidden [Tq, B, O] (NULL when O = 0)
 * Scores: "dot" q.k (Hq = Hk); "general" q' W_a k; "concat" v_a' tanh(W_a [q; k]); "additive"
 * ("bahdanau") v' tanh(W_1 k + W_2 q); then, with O > 0, hidden = tanh(W_c [context; q]).
 * Parameters, one flat float buffer in this order (rnnk_attention_param_range gives each one's
 * place): general weight_a [Hq, Hk]; concat weight_a [A, Hq+Hk], v_a [A]; additive
 * weight_key [A, Hk], weight_query [A, Hq], v [A]; then weight_c [O, Hk+Hq].
 * A memory (the keys with their projection) is made once per batch of keys and read by each
 * forward call (all queries at once, or one decoder step at a time); each backward call adds
 * the keys' side's gradients into the memory, and rnnk_attention_memory_backward turns them
 * into d_keys and the rest of d_params once. A memory belongs to the attention that made it
 * and to its parameters at that time: after rnnk_attention_set_params it is
 * RNNK_ERR_WRONG_HANDLE (make it again).
 * THREADS: rnnk_attention_set_params and _free need the attention alone;
 * rnnk_attention_backward, rnnk_attention_memory_zero_grads and _memory_free need the memory
 * alone; the other calls share them. */

/* Creates an attention of `score` ("dot", "general", "concat", "additive" or "bahdanau") with
 * queries of query_size and keys of key_size features, attn_size A (at least 1 for concat and
 * additive, 0 for the others), output_size O (0: no attentional hidden state), on `backend`
 * ("reference", "cpu", or "cuda": host pointers, each call uploading its inputs and downloading its
 * results, as a model's host entry points; RNNK_ERR_BACKEND_UNAVAILABLE as for rnnk_model_create
 * without the cuda feature or a GPU); `threads` as for rnnk_model_create.
 * Parameters start at 0 (set them with rnnk_attention_set_params). *out is NULL on failure. */
int rnnk_attention_create(const char* score, size_t query_size, size_t key_size, size_t attn_size, size_t output_size,
                          const char* backend, size_t threads, rnnk_attention** out);

/* Frees an attention. NULL is a no-op. */
int rnnk_attention_free(rnnk_attention* attention);

/* *out = the number of parameters (floats in the flat layout). */
int rnnk_attention_param_count(const rnnk_attention* attention, size_t* out);

/* Where parameter `name` (e.g. "weight_a", "v", "weight_c") lies in the flat buffer: *offset
 * and *len, each optional. A name the attention does not have is RNNK_ERR_INVALID_ARGUMENT
 * naming `name` and listing its parameters. */
int rnnk_attention_param_range(const rnnk_attention* attention, const char* name, size_t* offset, size_t* len);

/* Sets the parameters from params [param_count] (flat layout). */
int rnnk_attention_set_params(rnnk_attention* attention, const float* params, size_t params_len);

/* Copies the parameters into params [param_count] (flat layout). */
int rnnk_attention_get_params(const rnnk_attention* attention, float* params, size_t params_len);

/* Makes the memory of keys [S, B, Hk] (steps = S, batch = B) with lengths [B] (optional int64
 * in 1..=steps; NULL: all S), with the attention's current parameters; its gradients start at
 * zero. *out is NULL on failure. */
int rnnk_attention_memory_create(const rnnk_attention* attention, size_t steps, size_t batch, const int64_t* lengths,
                                 size_t lengths_len, const float* keys, size_t keys_len, rnnk_attention_memory** out);

/* Makes the memory of the sequences rows [B'] (int64, rows_len = B' >= 1, each in 0..B of
 * `memory`, repeats allowed) of `memory`, made by `attention` with its current parameters:
 * sequence i of *out is sequence rows[i] of `memory` (its keys, their projection and its
 * length), for a beam search's hypotheses (the Rust API's AttentionMemory::gather); its
 * gradients start at zero. NULL rows is RNNK_ERR_NULL_POINTER, rows_len 0 or an index out of
 * range RNNK_ERR_INVALID_ARGUMENT naming `rows_len` or `rows[i]` with the bound. *out is the
 * new memory (free it with rnnk_attention_memory_free), NULL on failure. */
int rnnk_attention_memory_gather(const rnnk_attention* attention, const rnnk_attention_memory* memory, const int64_t* rows,
                                 size_t rows_len, rnnk_attention_memory** out);

/* Frees a memory. NULL is a no-op. */
int rnnk_attention_memory_free(rnnk_attention_memory* memory);

/* Sets the gradients accumulated in the memory back to zero. */
int rnnk_attention_memory_zero_grads(rnnk_attention_memory* memory);

/* Forward of num_queries (Tq >= 1) queries over the memory:
 *   queries [Tq, B, Hq] in;  weights [Tq, B, S], context [Tq, B, Hk], hidden [Tq, B, O] out
 * (hidden NULL, and only NULL, when O = 0). */
int rnnk_attention_forward(const rnnk_attention* attention, const rnnk_attention_memory* memory, size_t num_queries,
                           const float* queries, size_t queries_len, float* weights, size_t weights_len, float* context,
                           size_t context_len, float* hidden, size_t hidden_len);

/* Backward of a forward call: its queries and its outputs weights, context, hidden (NULL, and
 * only NULL, when O = 0) in; d_weights, d_context, d_hidden optional (NULL: zeros); d_queries
 * [Tq, B, Hq] and d_params [param_count] optional outputs (NULL: skipped), d_params
 * overwritten, or added to if `accumulate` is non-zero. The keys' side's gradients are added
 * into the memory (for rnnk_attention_memory_backward). */
int rnnk_attention_backward(const rnnk_attention* attention, rnnk_attention_memory* memory, size_t num_queries, const float* queries,
                            size_t queries_len, const float* weights, size_t weights_len, const float* context, size_t context_len,
                            const float* hidden, size_t hidden_len, const float* d_weights, size_t d_weights_len,
                            const float* d_context, size_t d_context_len, const float* d_hidden, size_t d_hidden_len,
                            float* d_queries, size_t d_queries_len, float* d_params, size_t d_params_len, int accumulate);

/* The keys' side's backward from the gradients accumulated in the memory: d_keys [S, B, Hk]
 * (0 at the padding) and d_params [param_count] (the parameters' part through the keys' side:
 * add it to the backward calls' d_params), both optional; d_params overwritten, or added to if
 * `accumulate` is non-zero. The memory's gradients are kept (rnnk_attention_memory_zero_grads). */
int rnnk_attention_memory_backward(const rnnk_attention* attention, const rnnk_attention_memory* memory, float* d_keys,
                                   size_t d_keys_len, float* d_params, size_t d_params_len, int accumulate);

/* ---- device pointers (a model on "cuda"; see CUDA above) ----
 * Every float* below is DEVICE memory; `lengths` is host memory; `stream` is a CUstream /
 * cudaStream_t (NULL: the legacy default stream). In a library built without the cuda feature
 * they exist, check their arguments, and return RNNK_ERR_BACKEND_UNAVAILABLE. */

/* rnnk_forward on device buffers, ordered on `stream`.
 *   lengths [batch] optional int64 (host);  x [T, B, I];  h0 [L*D, B, Hout] optional;  c0 [L*D, B, H] optional (LSTM only)
 *   y [T, B, D*Hout];  hn [L*D, B, Hout] optional;  cn [L*D, B, H] optional (LSTM only) */
int rnnk_forward_device(const rnnk_model* model, size_t steps, size_t batch, const int64_t* lengths, size_t lengths_len,
                        const float* x, size_t x_len, const float* h0, size_t h0_len, const float* c0, size_t c0_len, float* y,
                        size_t y_len, float* hn, size_t hn_len, float* cn, size_t cn_len, void* stream);

/* rnnk_forward_training on device buffers, ordered on `stream`: the same buffers as
 * rnnk_forward_device; fills `reserve` (kept on the device), for rnnk_backward_device or
 * rnnk_backward. */
int rnnk_forward_training_device(const rnnk_model* model, rnnk_reserve* reserve, size_t steps, size_t batch,
                                 const int64_t* lengths, size_t lengths_len, const float* x, size_t x_len, const float* h0,
                                 size_t h0_len, const float* c0, size_t c0_len, float* y, size_t y_len, float* hn, size_t hn_len,
                                 float* cn, size_t cn_len, void* stream);

/* rnnk_forward_training_device with the dropout masks of (mask_seed, mask_offset), as
 * rnnk_forward_training_masked takes them. */
int rnnk_forward_training_masked_device(const rnnk_model* model, rnnk_reserve* reserve, uint64_t mask_seed, uint64_t mask_offset,
                                        size_t steps, size_t batch, const int64_t* lengths, size_t lengths_len, const float* x,
                                        size_t x_len, const float* h0, size_t h0_len, const float* c0, size_t c0_len, float* y,
                                        size_t y_len, float* hn, size_t hn_len, float* cn, size_t cn_len, void* stream);

/* rnnk_backward on device buffers, ordered on `stream`.
 *   dy [T, B, D*Hout], dhn [L*D, B, Hout], dcn [L*D, B, H]: optional (NULL: zeros)
 *   dx [T, B, I], dh0 [L*D, B, Hout], dc0 [L*D, B, H], dparams [param_count]: optional (NULL: skipped)
 * dparams is overwritten, or added to if `accumulate` is non-zero. */
int rnnk_backward_device(const rnnk_model* model, const rnnk_reserve* reserve, const float* dy, size_t dy_len, const float* dhn,
                         size_t dhn_len, const float* dcn, size_t dcn_len, float* dx, size_t dx_len, float* dh0, size_t dh0_len,
                         float* dc0, size_t dc0_len, float* dparams, size_t dparams_len, int accumulate, void* stream);

/* Sets the parameters from device memory, params [param_count] (flat layout), read after the
 * work enqueued on `stream`. Returns after they were read (a host synchronisation), so `params`
 * may be reused at once. */
int rnnk_model_set_params_device(rnnk_model* model, const float* params, size_t params_len, void* stream);

/* Copies the parameters (flat layout) into device memory, params [param_count], ordered on
 * `stream` (asynchronous, like the forward and backward calls). */
int rnnk_model_get_params_device(const rnnk_model* model, float* params, size_t params_len, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* RNN_KERNELS_H */
