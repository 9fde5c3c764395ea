/*
 * The C ABI from C, driven by capi/tests/c_program.rs:
 *
 *     capi_test DIR BACKEND THREADS FEATURE
 *
 * FEATURE is "cuda" when the library was built with the cuda feature, "nocuda" otherwise (the
 * device-pointer functions answer differently for a model that is not on "cuda").
 * DIR holds the inputs the Rust test wrote (raw little-endian float32: params.f32, x.f32,
 * h0.f32, c0.f32, dy.f32, dhn.f32, dcn.f32, dparams0.f32; params.safetensors). This program runs a
 * 2-layer bidirectional LSTM (I = 3, H = 5, T = 5, B = 3, lengths {5, 2, 4}) on BACKEND through
 * the header's functions, writes every output to DIR as <name>.out.f32 for the Rust test to
 * compare, bit for bit, with the Rust API; then passes every kind of bad argument and checks the
 * status code and that the message names the argument, for the host functions and the
 * *_device ones (whose arguments are checked before the backend: here, without a GPU in the
 * loop, their pointers are host pointers that must never be dereferenced). It also runs a
 * unidirectional 2-layer LSTM (parameters of seed 0) one step at a time with the rnnk_steps_*
 * functions (forward and backward) and a general attention over it (rnnk_attention_*), and
 * a beam search's reorder of an inference run and gather of the attention's memory
 * (rnnk_steps_reorder, rnnk_attention_memory_gather), whose outputs are compared the same way. Exit status 0 iff every check passed.
 */
#include "rnn_kernels.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { I = 3, H = 5, L = 2, D = 2, T = 5, B = 3 };
enum { X_LEN = T * B * I, Y_LEN = T * B * D * H, H_LEN = L * D * B * H };

static const char* dir;

static char* path_of(const char* name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

/* Reads DIR/name into a new buffer; *len gets its float count. */
static float* read_f32(const char* name, size_t* len) {
    FILE* f = fopen(path_of(name), "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path_of(name));
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    float* v = malloc(bytes > 0 ? (size_t)bytes : 1);
    if (fread(v, 1, (size_t)bytes, f) != (size_t)bytes) exit(2);
    fclose(f);
    *len = (size_t)bytes / sizeof(float);
    return v;
}

static void write_f32(const char* name, const float* v, size_t len) {
    char file[256];
    snprintf(file, sizeof file, "%s.out.f32", name);
    FILE* f = fopen(path_of(file), "wb");
    if (!f || fwrite(v, sizeof(float), len, f) != len) {
        fprintf(stderr, "cannot write %s\n", path_of(file));
        exit(2);
    }
    fclose(f);
}

int main(int argc, char** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DIR BACKEND THREADS FEATURE\n", argv[0]);
        return 2;
    }
    const int has_cuda = strcmp(argv[4], "cuda") == 0;
    dir = argv[1];
    const char* backend = argv[2];
    size_t threads = (size_t)strtoul(argv[3], NULL, 10);
    printf("rnn-kernels %s, backend %s, %zu thread(s)\n", rnnk_version(), backend, threads);

    size_t np, n;
    float* params = read_f32("params.f32", &np);
    float* x = read_f32("x.f32", &n);
    CHECK(n == X_LEN, "x.f32 holds %zu floats", n);
    float* h0 = read_f32("h0.f32", &n);
    float* c0 = read_f32("c0.f32", &n);
    float* dy = read_f32("dy.f32", &n);
    float* dhn = read_f32("dhn.f32", &n);
    float* dcn = read_f32("dcn.f32", &n);
    float* dparams_acc = read_f32("dparams0.f32", &n);
    const int64_t lengths[B] = {5, 2, 4};

    /* ---- the model, from the safetensors file ---- */
    rnnk_model* m = NULL;
    OK(rnnk_model_create("lstm", I, H, L, 1, 0, 1, backend, threads, &m));
    size_t count = 0, xl = 0, yl = 0, hl = 0, cl = 0;
    OK(rnnk_model_param_count(m, &count));
    CHECK(count == np, "param_count %zu, params.f32 holds %zu", count, np);
    OK(rnnk_model_tensor_sizes(m, T, B, &xl, &yl, &hl, &cl));
    CHECK(xl == X_LEN && yl == Y_LEN && hl == H_LEN && cl == H_LEN, "tensor sizes %zu %zu %zu %zu", xl, yl, hl, cl);
    OK(rnnk_model_load_safetensors(m, path_of("params.safetensors"), NULL, 0));
    float* got = malloc(np * sizeof(float));
    OK(rnnk_model_get_params(m, got, np));
    CHECK(memcmp(got, params, np * sizeof(float)) == 0, "parameters loaded from safetensors differ from params.f32");

    /* ---- inference, training forward, backward (overwrite, accumulate) ---- */
    float y[Y_LEN], hn[H_LEN], cn[H_LEN];
    OK(rnnk_forward(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN));
    write_f32("y_inf", y, Y_LEN);
    write_f32("hn_inf", hn, H_LEN);
    write_f32("cn_inf", cn, H_LEN);

    rnnk_reserve* r = NULL;
    OK(rnnk_reserve_create(&r));
    OK(rnnk_forward_training(m, r, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN));
    write_f32("y_tr", y, Y_LEN);
    write_f32("hn_tr", hn, H_LEN);
    write_f32("cn_tr", cn, H_LEN);

    float dx[X_LEN], dh0[H_LEN], dc0[H_LEN];
    float* dparams = malloc(np * sizeof(float));
    OK(rnnk_backward(m, r, dy, Y_LEN, dhn, H_LEN, dcn, H_LEN, dx, X_LEN, dh0, H_LEN, dc0, H_LEN, dparams, np, 0));
    write_f32("dx", dx, X_LEN);
    write_f32("dh0", dh0, H_LEN);
    write_f32("dc0", dc0, H_LEN);
    write_f32("dparams", dparams, np);
    OK(rnnk_backward(m, r, dy, Y_LEN, dhn, H_LEN, dcn, H_LEN, NULL, 0, NULL, 0, NULL, 0, dparams_acc, np, 1));
    write_f32("dparams_acc", dparams_acc, np);

    /* ---- a second model from the raw flat buffer; save it ---- */
    rnnk_model* m2 = NULL;
    OK(rnnk_model_create("lstm", I, H, L, 1, 0, 1, backend, threads, &m2));
    OK(rnnk_model_set_params(m2, params, np));
    OK(rnnk_forward(m2, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, NULL, 0, NULL, 0));
    write_f32("y_raw", y, Y_LEN);
    OK(rnnk_model_save_safetensors(m2, path_of("saved.safetensors")));

    /* ---- bad arguments: status code, and the message names the argument ---- */
    /* NULL pointers */
    FAILS(rnnk_forward(m, T, B, lengths, B, NULL, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN),
          RNNK_ERR_NULL_POINTER, "`x`");
    FAILS(rnnk_forward(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, NULL, Y_LEN, hn, H_LEN, cn, H_LEN),
          RNNK_ERR_NULL_POINTER, "`y`");
    FAILS(rnnk_forward(NULL, T, B, lengths, B, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0), RNNK_ERR_NULL_POINTER,
          "`model`");
    FAILS(rnnk_backward(m, NULL, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0), RNNK_ERR_NULL_POINTER,
          "`reserve`");
    FAILS(rnnk_model_create("lstm", I, H, L, 1, 0, 1, backend, threads, NULL), RNNK_ERR_NULL_POINTER, "`out`");
    FAILS(rnnk_model_param_count(m, NULL), RNNK_ERR_NULL_POINTER, "`out`");
    FAILS(rnnk_model_load_safetensors(m, NULL, NULL, 0), RNNK_ERR_NULL_POINTER, "`path`");
    rnnk_model* bad = (rnnk_model*)&count; /* overwritten with NULL by a failing create */
    FAILS(rnnk_model_create(NULL, I, H, L, 1, 0, 1, backend, threads, &bad), RNNK_ERR_NULL_POINTER, "`cell`");
    CHECK(bad == NULL, "a failing create left *out non-NULL");

    /* wrong sizes: the message names the argument and the given count */
    FAILS(rnnk_forward(m, T, B, lengths, B, x, X_LEN - 1, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN),
          RNNK_ERR_SIZE_MISMATCH, "`x`: expected [T, B, I] = [5, 3, 3], 45 elements, got 44 elements");
    FAILS(rnnk_forward(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN + 1, hn, H_LEN, cn, H_LEN),
          RNNK_ERR_SIZE_MISMATCH, "`y`");
    FAILS(rnnk_forward(m, T, B, lengths, B, x, X_LEN, h0, H_LEN - 5, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN),
          RNNK_ERR_SIZE_MISMATCH, "`h0`");
    FAILS(rnnk_forward(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, 1), RNNK_ERR_SIZE_MISMATCH,
          "`cn`");
    FAILS(rnnk_forward(m, T, B, lengths, 2, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0), RNNK_ERR_SIZE_MISMATCH,
          "`lengths`");
    FAILS(rnnk_backward(m, r, dy, Y_LEN - 2, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0), RNNK_ERR_SIZE_MISMATCH,
          "`dy`");
    FAILS(rnnk_backward(m, r, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, dparams, np - 1, 0),
          RNNK_ERR_SIZE_MISMATCH, "`dparams`");
    FAILS(rnnk_backward(m, r, dy, Y_LEN, NULL, 0, dcn, 7, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0), RNNK_ERR_SIZE_MISMATCH,
          "`dcn`");
    FAILS(rnnk_model_set_params(m2, params, np + 1), RNNK_ERR_SIZE_MISMATCH, "`params`");
    FAILS(rnnk_model_get_params(m2, got, 3), RNNK_ERR_SIZE_MISMATCH, "`params`");

    /* values out of range */
    const int64_t zero_len[B] = {5, 0, 4}, neg_len[B] = {-1, 2, 4}, long_len[B] = {5, 2, 6};
    FAILS(rnnk_forward(m, T, B, zero_len, B, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0), RNNK_ERR_INVALID_ARGUMENT,
          "`lengths[1]`");
    FAILS(rnnk_forward(m, T, B, neg_len, B, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0), RNNK_ERR_INVALID_ARGUMENT,
          "`lengths[0]`");
    FAILS(rnnk_forward(m, T, B, long_len, B, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0), RNNK_ERR_INVALID_ARGUMENT,
          "`lengths[2]`: must be in 1..=5 (steps), got 6");
    FAILS(rnnk_forward(m, 0, B, NULL, 0, x, 0, NULL, 0, NULL, 0, y, 0, NULL, 0, NULL, 0), RNNK_ERR_INVALID_ARGUMENT, "`steps`");
    FAILS(rnnk_forward(m, T, B, lengths, B, x, X_LEN, NULL, 0, NULL, 0, (float*)x, Y_LEN, NULL, 0, NULL, 0),
          RNNK_ERR_INVALID_ARGUMENT, "overlap");
    FAILS(rnnk_model_create("lstmx", I, H, L, 1, 0, 1, backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT, "`cell`");
    FAILS(rnnk_model_create("lstm", I, 0, L, 1, 0, 1, backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT, "`hidden_size`");
    FAILS(rnnk_model_create("gru", I, H, L, 1, 2, 1, backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT, "`proj_size`");
    FAILS(rnnk_model_create("lstm", I, H, L, 1, 0, 1, "tpu", threads, &bad), RNNK_ERR_INVALID_ARGUMENT, "`backend`");
    {
        int st = rnnk_model_create("lstm", I, H, L, 1, 0, 1, "cuda", 0, &bad);
        if (st == RNNK_OK) {
            printf("backend cuda is available here\n");
            OK(rnnk_model_free(bad));
        } else {
            FAILS(rnnk_model_create("lstm", I, H, L, 1, 0, 1, "cuda", 0, &bad), RNNK_ERR_BACKEND_UNAVAILABLE, "cuda");
        }
    }
    /* cell options (rnnk_model_create_ex): each bad item names its key; no options is a plain model */
    FAILS(rnnk_model_create_ex("lstm", I, H, L, 0, 0, 1, "peepholes", backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT,
          "`options`: items key=value with a key among direction, merge, peephole");
    CHECK(bad == NULL, "a failing create_ex left *out non-NULL");
    FAILS(rnnk_model_create_ex("lstm", I, H, L, 0, 0, 1, "peephole=yes", backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT,
          "`options: peephole`: true or false, got \"yes\"");
    FAILS(rnnk_model_create_ex("lstm", I, H, L, 0, 0, 1, "gate_clip=1,gate_clip=2", backend, threads, &bad),
          RNNK_ERR_INVALID_ARGUMENT, "`options`: each key at most once");
    FAILS(rnnk_model_create_ex("lstm", I, H, L, 0, 0, 1, "gate_clip=-1", backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT,
          "`gate_clip`");
    FAILS(rnnk_model_create_ex("lstm", I, H, L, 1, 0, 1, "direction=reverse", backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT,
          "`options: direction`: bidirectional, or no direction, with `bidirectional` = 1");
    FAILS(rnnk_model_create_ex("gru", I, H, L, 0, 0, 1, "peephole", backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT,
          "`peephole`: false for cell gru");
    FAILS(rnnk_model_create_ex("lstm", I, H, L, 0, 0, 1, "linear_before_reset=false", backend, threads, &bad),
          RNNK_ERR_INVALID_ARGUMENT, "`linear_before_reset`");
    FAILS(rnnk_model_create_ex("gru", I, H, L, 0, 0, 1, "merge=sum", backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT, "`merge`");
    FAILS(rnnk_model_create_ex("gru", I, H, L, 0, 0, 1, "\xff", backend, threads, &bad), RNNK_ERR_INVALID_ARGUMENT, "`options`");
    FAILS(rnnk_model_create_ex("gru", I, H, L, 0, 0, 1, "", backend, threads, NULL), RNNK_ERR_NULL_POINTER, "`out`");
    FAILS(rnnk_model_options(m, NULL, 4, NULL), RNNK_ERR_NULL_POINTER, "`buf`");
    {
        rnnk_model* plain = NULL;
        char text[8] = "x";
        size_t len = 99, plain_np = 0;
        OK(rnnk_model_create_ex("lstm", I, H, L, 1, 0, 1, NULL, backend, threads, &plain));
        OK(rnnk_model_param_count(plain, &plain_np));
        CHECK(plain_np == np, "create_ex without options: %zu parameters, rnnk_model_create: %zu", plain_np, np);
        OK(rnnk_model_options(plain, text, sizeof text, &len));
        CHECK(len == 0 && text[0] == 0, "a plain model's options: \"%s\" (%zu)", text, len);
        OK(rnnk_model_free(plain));
        OK(rnnk_model_create_ex("lstm", I, H, L, 1, 0, 1, " , direction=bidirectional", backend, threads, &plain));
        OK(rnnk_model_options(plain, text, sizeof text, &len));
        CHECK(len == 0 && text[0] == 0, "direction=bidirectional with bidirectional = 1 is plain: \"%s\"", text);
        OK(rnnk_model_free(plain));
    }

    rnnk_model* g = NULL;
    OK(rnnk_model_create("gru", I, H, 1, 0, 0, 1, backend, threads, &g));
    FAILS(rnnk_forward(g, T, B, NULL, 0, x, X_LEN, NULL, 0, c0, B * H, y, T * B * H, NULL, 0, NULL, 0), RNNK_ERR_INVALID_ARGUMENT,
          "`c0`");

    /* files */
    FAILS(rnnk_model_load_safetensors(m2, path_of("no_such_file.safetensors"), NULL, 0), RNNK_ERR_IO, "no_such_file.safetensors");
    FAILS(rnnk_model_load_safetensors(m2, path_of("x.f32"), NULL, 0), RNNK_ERR_FILE_FORMAT, "x.f32");
    FAILS(rnnk_model_load_safetensors(m2, path_of("params.safetensors"), "rnn.", 0), RNNK_ERR_FILE_FORMAT, "rnn.weight_ih_l0");
    FAILS(rnnk_model_load_safetensors(g, path_of("params.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "weight_ih_l0");

    /* wrong handles */
    FAILS(rnnk_model_param_count((const rnnk_model*)r, &count), RNNK_ERR_WRONG_HANDLE, "`model`: expected a live rnnk_model, got a rnnk_reserve");
    FAILS(rnnk_backward(m, (const rnnk_reserve*)m2, dy, Y_LEN, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, 0),
          RNNK_ERR_WRONG_HANDLE, "`reserve`");
    FAILS(rnnk_model_param_count((const rnnk_model*)lengths, &count), RNNK_ERR_WRONG_HANDLE, "`model`");
    rnnk_model* freed = NULL;
    OK(rnnk_model_create("rnn_relu", I, H, 1, 0, 0, 0, backend, threads, &freed));
    OK(rnnk_model_free(freed));
    FAILS(rnnk_model_param_count(freed, &count), RNNK_ERR_WRONG_HANDLE, "`model`");
    FAILS(rnnk_model_free(freed), RNNK_ERR_WRONG_HANDLE, "`model`");
    rnnk_reserve* r2 = NULL;
    OK(rnnk_reserve_create(&r2));
    FAILS(rnnk_backward(m, r2, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0), RNNK_ERR_INVALID_ARGUMENT,
          "`reserve`: must be filled by rnnk_forward_training");
    /* a reserve filled by another model */
    OK(rnnk_forward_training(m2, r2, T, B, lengths, B, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0));
    FAILS(rnnk_backward(m, r2, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0), RNNK_ERR_WRONG_HANDLE,
          "`reserve`: expected a reserve filled by this model");
    /* a reserve made before the parameters changed */
    OK(rnnk_model_set_params(m2, params, np));
    FAILS(rnnk_backward(m2, r2, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0), RNNK_ERR_WRONG_HANDLE,
          "reserve");
    OK(rnnk_reserve_free(r2));
    FAILS(rnnk_reserve_free(r2), RNNK_ERR_WRONG_HANDLE, "`reserve`");

    /* ---- the *_device functions: the same argument checks, then the backend ----
     * x, y, ... are host pointers here: every call below must fail before using them. */
    void* stream = NULL;
    /* NULL pointers */
    FAILS(rnnk_forward_device(NULL, T, B, lengths, B, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0, stream),
          RNNK_ERR_NULL_POINTER, "`model`");
    FAILS(rnnk_forward_device(m, T, B, lengths, B, NULL, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN, stream),
          RNNK_ERR_NULL_POINTER, "`x`");
    FAILS(rnnk_forward_device(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, NULL, Y_LEN, hn, H_LEN, cn, H_LEN, stream),
          RNNK_ERR_NULL_POINTER, "`y`");
    FAILS(rnnk_forward_training_device(m, NULL, T, B, lengths, B, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0, stream),
          RNNK_ERR_NULL_POINTER, "`reserve`");
    FAILS(rnnk_forward_training_device(m, r, T, B, lengths, B, NULL, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0, stream),
          RNNK_ERR_NULL_POINTER, "`x`");
    FAILS(rnnk_backward_device(m, NULL, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0, stream),
          RNNK_ERR_NULL_POINTER, "`reserve`");
    FAILS(rnnk_backward_device(NULL, r, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0, stream),
          RNNK_ERR_NULL_POINTER, "`model`");
    FAILS(rnnk_model_set_params_device(m2, NULL, np, stream), RNNK_ERR_NULL_POINTER, "`params`");
    FAILS(rnnk_model_get_params_device(m2, NULL, np, stream), RNNK_ERR_NULL_POINTER, "`params`");
    FAILS(rnnk_model_set_params_device(NULL, params, np, stream), RNNK_ERR_NULL_POINTER, "`model`");
    FAILS(rnnk_model_get_params_device(NULL, got, np, stream), RNNK_ERR_NULL_POINTER, "`model`");

    /* wrong sizes: the host functions' messages */
    FAILS(rnnk_forward_device(m, T, B, lengths, B, x, X_LEN - 1, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN, stream),
          RNNK_ERR_SIZE_MISMATCH, "`x`: expected [T, B, I] = [5, 3, 3], 45 elements, got 44 elements");
    FAILS(rnnk_forward_device(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN + 1, hn, H_LEN, cn, H_LEN, stream),
          RNNK_ERR_SIZE_MISMATCH, "`y`");
    FAILS(rnnk_forward_device(m, T, B, lengths, B, x, X_LEN, h0, H_LEN - 5, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN, stream),
          RNNK_ERR_SIZE_MISMATCH, "`h0`");
    FAILS(rnnk_forward_device(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, 2, y, Y_LEN, hn, H_LEN, cn, H_LEN, stream),
          RNNK_ERR_SIZE_MISMATCH, "`c0`");
    FAILS(rnnk_forward_device(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, 1, cn, H_LEN, stream),
          RNNK_ERR_SIZE_MISMATCH, "`hn`");
    FAILS(rnnk_forward_training_device(m, r, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, 1, stream),
          RNNK_ERR_SIZE_MISMATCH, "`cn`");
    FAILS(rnnk_forward_device(m, T, B, lengths, 2, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0, stream),
          RNNK_ERR_SIZE_MISMATCH, "`lengths`");
    FAILS(rnnk_backward_device(m, r, dy, Y_LEN - 2, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0, stream),
          RNNK_ERR_SIZE_MISMATCH, "`dy`");
    FAILS(rnnk_backward_device(m, r, dy, Y_LEN, dhn, 4, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0, stream),
          RNNK_ERR_SIZE_MISMATCH, "`dhn`");
    FAILS(rnnk_backward_device(m, r, dy, Y_LEN, NULL, 0, dcn, 7, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0, stream),
          RNNK_ERR_SIZE_MISMATCH, "`dcn`");
    FAILS(rnnk_backward_device(m, r, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN + 3, NULL, 0, NULL, 0, NULL, 0, 0, stream),
          RNNK_ERR_SIZE_MISMATCH, "`dx`");
    FAILS(rnnk_backward_device(m, r, dy, Y_LEN, NULL, 0, NULL, 0, NULL, 0, dh0, 1, NULL, 0, NULL, 0, 0, stream),
          RNNK_ERR_SIZE_MISMATCH, "`dh0`");
    FAILS(rnnk_backward_device(m, r, dy, Y_LEN, NULL, 0, NULL, 0, NULL, 0, NULL, 0, dc0, 1, NULL, 0, 0, stream),
          RNNK_ERR_SIZE_MISMATCH, "`dc0`");
    FAILS(rnnk_backward_device(m, r, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, dparams, np - 1, 0, stream),
          RNNK_ERR_SIZE_MISMATCH, "`dparams`");
    FAILS(rnnk_model_set_params_device(m2, params, np + 1, stream), RNNK_ERR_SIZE_MISMATCH, "`params`");
    FAILS(rnnk_model_get_params_device(m2, got, 3, stream), RNNK_ERR_SIZE_MISMATCH, "`params`");

    /* values out of range, misaligned and overlapping pointers, wrong handles */
    FAILS(rnnk_forward_device(m, T, B, long_len, B, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0, stream),
          RNNK_ERR_INVALID_ARGUMENT, "`lengths[2]`: must be in 1..=5 (steps), got 6");
    FAILS(rnnk_forward_device(m, 0, B, NULL, 0, x, 0, NULL, 0, NULL, 0, y, 0, NULL, 0, NULL, 0, stream), RNNK_ERR_INVALID_ARGUMENT,
          "`steps`");
    FAILS(rnnk_forward_device(m, T, B, lengths, B, (const float*)((const char*)x + 1), X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0,
                              NULL, 0, stream),
          RNNK_ERR_INVALID_ARGUMENT, "`x`: a pointer aligned to 4 bytes");
    FAILS(rnnk_forward_device(m, T, B, lengths, B, x, X_LEN, NULL, 0, NULL, 0, (float*)x, Y_LEN, NULL, 0, NULL, 0, stream),
          RNNK_ERR_INVALID_ARGUMENT, "overlap");
    FAILS(rnnk_backward_device(m, r, dy, Y_LEN, NULL, 0, NULL, 0, (float*)dy, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0, stream),
          RNNK_ERR_INVALID_ARGUMENT, "overlap");
    FAILS(rnnk_forward_device(g, T, B, NULL, 0, x, X_LEN, NULL, 0, c0, B * H, y, T * B * H, NULL, 0, NULL, 0, stream),
          RNNK_ERR_INVALID_ARGUMENT, "`c0`");
    FAILS(rnnk_forward_device((const rnnk_model*)r, T, B, NULL, 0, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0, stream),
          RNNK_ERR_WRONG_HANDLE, "`model`: expected a live rnnk_model, got a rnnk_reserve");
    FAILS(rnnk_backward_device(m, (const rnnk_reserve*)m2, dy, Y_LEN, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, 0, stream),
          RNNK_ERR_WRONG_HANDLE, "`reserve`");
    FAILS(rnnk_model_get_params_device(freed, got, np, stream), RNNK_ERR_WRONG_HANDLE, "`model`");
    {
        rnnk_reserve* empty = NULL;
        OK(rnnk_reserve_create(&empty));
        FAILS(rnnk_backward_device(m, empty, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0, stream),
              RNNK_ERR_INVALID_ARGUMENT, "`reserve`: must be filled by rnnk_forward_training");
        /* a reserve filled by another model */
        OK(rnnk_forward_training(m2, empty, T, B, lengths, B, x, X_LEN, NULL, 0, NULL, 0, y, Y_LEN, NULL, 0, NULL, 0));
        FAILS(rnnk_backward_device(m, empty, dy, Y_LEN, NULL, 0, NULL, 0, dx, X_LEN, NULL, 0, NULL, 0, NULL, 0, 0, stream),
              RNNK_ERR_WRONG_HANDLE, "`reserve`: expected a reserve filled by this model");
        OK(rnnk_reserve_free(empty));
    }

    /* every argument right, on a model that is not on "cuda": INVALID_ARGUMENT naming `model`,
     * or BACKEND_UNAVAILABLE in a library without the cuda feature */
    {
        const int code = has_cuda ? RNNK_ERR_INVALID_ARGUMENT : RNNK_ERR_BACKEND_UNAVAILABLE;
        const char* needle = has_cuda ? "`model`: expected a model on the \"cuda\" backend" : "built without the `cuda` feature";
        char got_backend[64];
        snprintf(got_backend, sizeof got_backend, "got a model on \"%s\"", backend);
        FAILS(rnnk_forward_device(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN, stream), code,
              needle);
        FAILS(rnnk_forward_device(m, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN, stream), code,
              got_backend);
        FAILS(rnnk_forward_training_device(m, r, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn, H_LEN,
                                           stream),
              code, needle);
        FAILS(rnnk_forward_training_masked_device(m, r, 7, 3, T, B, lengths, B, x, X_LEN, h0, H_LEN, c0, H_LEN, y, Y_LEN, hn, H_LEN, cn,
                                                  H_LEN, stream),
              code, needle);
        FAILS(rnnk_backward_device(m, r, dy, Y_LEN, dhn, H_LEN, dcn, H_LEN, dx, X_LEN, dh0, H_LEN, dc0, H_LEN, dparams, np, 0, stream),
              code, needle);
        FAILS(rnnk_backward_device(m, r, dy, Y_LEN, dhn, H_LEN, dcn, H_LEN, dx, X_LEN, dh0, H_LEN, dc0, H_LEN, dparams, np, 0, stream),
              code, got_backend);
        FAILS(rnnk_model_set_params_device(m2, params, np, stream), code, needle);
        FAILS(rnnk_model_get_params_device(m2, got, np, stream), code, needle);
        FAILS(rnnk_model_get_params_device(m2, got, np, (void*)&count), code, got_backend);
        /* the failed calls changed nothing: the parameters and the reserve are still those above */
        OK(rnnk_model_get_params(m2, got, np));
        CHECK(memcmp(got, params, np * sizeof(float)) == 0, "a failed rnnk_model_set_params_device changed the parameters");
    }

    /* ---- decoder steps: a unidirectional LSTM (parameters of seed 0) one step at a time, its
     * backward, and a general attention with the hidden state over keys [T, B, D*H] (dy.f32)
     * whose queries are the decoder's outputs ---- */
    {
        enum { DH = L * B * H, DX = B * I, DY = B * H, HK = D * H };
        rnnk_model* dec = NULL;
        OK(rnnk_model_create("lstm", I, H, L, 0, 0, 1, backend, threads, &dec));
        size_t dnp = 0, count = 0;
        OK(rnnk_model_param_count(dec, &dnp));
        rnnk_steps* run = NULL;
        rnnk_steps_backward* bw = NULL;
        FAILS(rnnk_steps_start(m, B, NULL, 0, NULL, 0, 1, &run), RNNK_ERR_INVALID_ARGUMENT, "`direction`");
        CHECK(run == NULL, "a failing rnnk_steps_start left *out non-NULL");
        FAILS(rnnk_steps_start(dec, B, h0, DH + 1, NULL, 0, 1, &run), RNNK_ERR_SIZE_MISMATCH, "`h0`");
        OK(rnnk_steps_start(dec, B, h0, DH, c0, DH, 1, &run));
        FAILS(rnnk_steps_backward_start(dec, run, NULL, 0, NULL, 0, &bw), RNNK_ERR_INVALID_ARGUMENT, "`steps`");
        CHECK(bw == NULL, "a failing rnnk_steps_backward_start left *out non-NULL");
        float steps_y[T * DY], steps_dx[T * DX], dx1[DX], dh0s[DH], dc0s[DH];
        float* steps_dparams = malloc(dnp * sizeof(float));
        for (int t = 0; t < T; t++) OK(rnnk_steps_step(dec, run, x + t * DX, DX, steps_y + t * DY, DY));
        FAILS(rnnk_steps_step(dec, run, x, DX + 1, steps_y, DY), RNNK_ERR_SIZE_MISMATCH, "`x`");
        FAILS(rnnk_steps_step(dec, run, x, DX, NULL, DY), RNNK_ERR_NULL_POINTER, "`y`");
        OK(rnnk_steps_info(run, &count, NULL, NULL, NULL));
        CHECK(count == T, "the run took %zu steps, expected %d", count, T);
        OK(rnnk_steps_backward_start(dec, run, NULL, 0, NULL, 0, &bw));
        for (int t = T - 1; t >= 0; t--) OK(rnnk_steps_backward_step(dec, bw, dy + t * DY, DY, dx1, DX));
        FAILS(rnnk_steps_backward_step(dec, bw, dy, DY, dx1, DX), RNNK_ERR_INVALID_ARGUMENT, "`backward`");
        OK(rnnk_steps_backward_finish(dec, bw, steps_dx, T * DX, dh0s, DH, dc0s, DH, steps_dparams, dnp, 0));
        write_f32("steps_y", steps_y, T * DY);
        write_f32("steps_dx", steps_dx, T * DX);
        write_f32("steps_dh0", dh0s, DH);
        write_f32("steps_dc0", dc0s, DH);
        write_f32("steps_dparams", steps_dparams, dnp);
        OK(rnnk_steps_backward_free(bw));
        FAILS(rnnk_steps_reorder(run, lengths, B), RNNK_ERR_INVALID_ARGUMENT, "`steps`: an inference run");
        OK(rnnk_steps_free(run));
        free(steps_dparams);

        /* a beam search's reorder: an inference run of B sequences, a step, its state reordered
         * to K = 2B hypotheses (row i continues row beam_rows[i]), a step of those */
        enum { K = 2 * B };
        const int64_t beam_rows[K] = {2, 0, 0, 1, 2, 1};
        const int64_t bad_rows[2] = {0, B};
        float beam_y1[DY], beam_y[K * H], h1[DH], c1[DH], beam_h[L * K * H], beam_c[L * K * H];
        OK(rnnk_steps_start(dec, B, h0, DH, c0, DH, 0, &run));
        OK(rnnk_steps_step(dec, run, x, DX, beam_y1, DY));
        OK(rnnk_steps_state(run, h1, DH, c1, DH));
        FAILS(rnnk_steps_reorder(run, bad_rows, 2), RNNK_ERR_INVALID_ARGUMENT, "`rows[1]`: a row in 0..3 (the run's B = 3), got 3");
        FAILS(rnnk_steps_reorder(run, NULL, K), RNNK_ERR_NULL_POINTER, "`rows`");
        OK(rnnk_steps_reorder(run, beam_rows, K));
        OK(rnnk_steps_info(run, NULL, &count, NULL, NULL));
        CHECK(count == K, "the reordered run has B = %zu, expected %d", count, K);
        OK(rnnk_steps_state(run, beam_h, L * K * H, beam_c, L * K * H));
        for (int l = 0; l < L; l++)
            for (int i = 0; i < K; i++) {
                const size_t at = ((size_t)l * K + i) * H, from = ((size_t)l * B + beam_rows[i]) * H;
                CHECK(memcmp(beam_h + at, h1 + from, H * sizeof(float)) == 0, "h of layer %d, row %d is not row %d", l, i,
                      (int)beam_rows[i]);
                CHECK(memcmp(beam_c + at, c1 + from, H * sizeof(float)) == 0, "c of layer %d, row %d is not row %d", l, i,
                      (int)beam_rows[i]);
            }
        FAILS(rnnk_steps_step(dec, run, x + DX, DX, beam_y, K * H), RNNK_ERR_SIZE_MISMATCH, "`x`");
        OK(rnnk_steps_step(dec, run, x + DX, K * I, beam_y, K * H));
        write_f32("beam_y1", beam_y1, DY);
        write_f32("beam_h", beam_h, L * K * H);
        write_f32("beam_c", beam_c, L * K * H);
        write_f32("beam_y", beam_y, K * H);
        OK(rnnk_steps_free(run));
        OK(rnnk_model_free(dec));

        rnnk_attention* att = NULL;
        rnnk_attention_memory* mem = NULL;
        size_t anp = 0, off = 0, len = 0;
        FAILS(rnnk_attention_create("general", H, HK, 1, H, backend, threads, &att), RNNK_ERR_INVALID_ARGUMENT, "`attn_size`");
        CHECK(att == NULL, "a failing rnnk_attention_create left *out non-NULL");
        OK(rnnk_attention_create("general", H, HK, 0, H, backend, threads, &att));
        OK(rnnk_attention_param_count(att, &anp));
        CHECK(anp == H * HK + H * (HK + H), "attention parameters: %zu", anp);
        OK(rnnk_attention_param_range(att, "weight_c", &off, &len));
        CHECK(off == H * HK && len == H * (HK + H), "weight_c at %zu, %zu floats", off, len);
        OK(rnnk_attention_set_params(att, params, anp));
        const int64_t bad_lengths[B] = {5, 0, 4};
        FAILS(rnnk_attention_memory_create(att, T, B, bad_lengths, B, dy, Y_LEN, &mem), RNNK_ERR_INVALID_ARGUMENT, "`lengths[1]`");
        CHECK(mem == NULL, "a failing rnnk_attention_memory_create left *out non-NULL");
        OK(rnnk_attention_memory_create(att, T, B, lengths, B, dy, Y_LEN, &mem));
        float aw[T * B * T], actx[T * B * HK], ahid[T * B * H];
        FAILS(rnnk_attention_forward(att, mem, T, steps_y, T * DY, aw, T * B * T, actx, T * B * HK, NULL, 0), RNNK_ERR_NULL_POINTER,
              "`hidden`");
        OK(rnnk_attention_forward(att, mem, T, steps_y, T * DY, aw, T * B * T, actx, T * B * HK, ahid, T * B * H));
        write_f32("attn_weights", aw, T * B * T);
        write_f32("attn_context", actx, T * B * HK);
        write_f32("attn_hidden", ahid, T * B * H);
        /* the memory of the K hypotheses' sequences, queried with their step's outputs */
        rnnk_attention_memory* beam_mem = NULL;
        FAILS(rnnk_attention_memory_gather(att, mem, bad_rows, 2, &beam_mem), RNNK_ERR_INVALID_ARGUMENT,
              "`rows[1]`: a row in 0..3 (the memory's B = 3), got 3");
        FAILS(rnnk_attention_memory_gather(att, mem, beam_rows, 0, &beam_mem), RNNK_ERR_INVALID_ARGUMENT, "`rows_len`");
        CHECK(beam_mem == NULL, "a failing rnnk_attention_memory_gather left *out non-NULL");
        OK(rnnk_attention_memory_gather(att, mem, beam_rows, K, &beam_mem));
        float beam_w[K * T], beam_ctx[K * HK], beam_hid[K * H];
        OK(rnnk_attention_forward(att, beam_mem, 1, beam_y, K * H, beam_w, K * T, beam_ctx, K * HK, beam_hid, K * H));
        write_f32("beam_weights", beam_w, K * T);
        write_f32("beam_context", beam_ctx, K * HK);
        write_f32("beam_hidden", beam_hid, K * H);
        OK(rnnk_attention_memory_free(beam_mem));
        OK(rnnk_attention_memory_free(mem));
        OK(rnnk_attention_free(att));
    }

    /* NULL-safe frees; the good handles still work after all of the above */
    OK(rnnk_model_free(NULL));
    OK(rnnk_reserve_free(NULL));
    OK(rnnk_backward(m, r, dy, Y_LEN, dhn, H_LEN, dcn, H_LEN, dx, X_LEN, dh0, H_LEN, dc0, H_LEN, dparams, np, 0));
    OK(rnnk_reserve_free(r));
    OK(rnnk_model_free(g));
    OK(rnnk_model_free(m2));
    OK(rnnk_model_free(m));

    free(params), free(x), free(h0), free(c0), free(dy), free(dhn), free(dcn), free(dparams_acc), free(dparams), free(got);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
