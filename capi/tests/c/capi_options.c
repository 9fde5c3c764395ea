/*
 * A model with cell options (rnnk_model_create_ex) from C, driven by capi/tests/c_program.rs:
 *
 *     capi_options DIR BACKEND THREADS CELL LAYERS BIDIRECTIONAL OPTIONS CANONICAL EXPECT
 *
 * OPTIONS is the string passed to rnnk_model_create_ex, CANONICAL what rnnk_model_options must
 * return for it. EXPECT is "ok" when the Rust API runs the configuration on BACKEND, or
 * "unsupported:OPTION" when it refuses OPTION there: then the create must fail with
 * RNNK_ERR_UNSUPPORTED naming the backend's refusal and the option, and nothing else runs.
 *
 * Otherwise DIR holds the inputs the Rust test wrote (raw little-endian float32: params.f32,
 * x.f32, h0.f32, c0.f32 for LSTM, dy.f32, dhn.f32, dcn.f32 for LSTM); their lengths must be the
 * sizes the model reports. This program runs inference, a training forward and backward over
 * T = 5, B = 3, lengths {5, 2, 4} (training with the masks of seed 7, offset 3) and writes every output to DIR as <name>.out.f32 for the Rust
 * test to compare, bit for bit, with the Rust API; saves the parameters as DIR/saved.safetensors
 * and loads them into a second model. Exit status 0 iff every check passed.
 */
#include "rnn_kernels.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T = 5, B = 3 };

static const char* dir;

static char* path_of(const char* name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

/* Reads DIR/name into a new buffer of `want` floats; the file must hold exactly that many. */
static float* read_f32(const char* name, size_t want) {
    FILE* f = fopen(path_of(name), "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path_of(name));
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    CHECK((size_t)bytes == want * sizeof(float), "%s holds %ld bytes, the model's size is %zu floats", name, bytes, want);
    float* v = calloc(want > 0 ? want : 1, sizeof(float));
    size_t n = (size_t)bytes < want * sizeof(float) ? (size_t)bytes : want * sizeof(float);
    if (fread(v, 1, n, f) != n) exit(2);
    fclose(f);
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
    if (argc != 10) {
        fprintf(stderr, "usage: %s DIR BACKEND THREADS CELL LAYERS BIDIRECTIONAL OPTIONS CANONICAL EXPECT\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    const char *backend = argv[2], *cell = argv[4], *options = argv[7], *canonical = argv[8], *expect = argv[9];
    const size_t threads = (size_t)strtoul(argv[3], NULL, 10), layers = (size_t)strtoul(argv[5], NULL, 10);
    const int bidirectional = atoi(argv[6]);
    const size_t I = 3, H = 5;
    printf("%s, %zu layer(s), bidirectional %d, options \"%s\" on %s (%zu thread(s)): expect %s\n", cell, layers, bidirectional,
           options, backend, threads, expect);

    rnnk_model* m = NULL;
    if (strncmp(expect, "unsupported:", 12) == 0) {
        char needle[128];
        snprintf(needle, sizeof needle, "does not support the option `%s`", expect + 12);
        m = (rnnk_model*)&m; /* a failing create sets it to NULL */
        FAILS(rnnk_model_create_ex(cell, I, H, layers, bidirectional, 0, 1, options, backend, threads, &m), RNNK_ERR_UNSUPPORTED,
              needle);
        CHECK(m == NULL, "a refused create left *out non-NULL");
        printf("%d checks, %d failed\n", checks, failures);
        return failures == 0 ? 0 : 1;
    }
    CHECK(strcmp(expect, "ok") == 0, "EXPECT is \"ok\" or \"unsupported:OPTION\", got \"%s\"", expect);

    OK(rnnk_model_create_ex(cell, I, H, layers, bidirectional, 0, 1, options, backend, threads, &m));
    if (m == NULL) {
        printf("%d checks, %d failed\n", checks, failures);
        return 1;
    }
    /* the options read back: first the length alone, then a buffer one byte short, then enough */
    size_t len = 0;
    char text[256];
    OK(rnnk_model_options(m, NULL, 0, &len));
    CHECK(len == strlen(canonical), "options length %zu, expected %zu (\"%s\")", len, strlen(canonical), canonical);
    text[0] = 'x';
    FAILS(rnnk_model_options(m, text, len, &len), RNNK_ERR_SIZE_MISMATCH, "`buf`");
    CHECK(text[0] == 'x', "a too small buffer was written");
    OK(rnnk_model_options(m, text, sizeof text, NULL));
    CHECK(strcmp(text, canonical) == 0, "rnnk_model_options gave \"%s\", expected \"%s\"", text, canonical);
    /* the canonical form creates the same configuration */
    {
        rnnk_model* again = NULL;
        char text2[256];
        OK(rnnk_model_create_ex(cell, I, H, layers, bidirectional, 0, 1, canonical, backend, threads, &again));
        OK(rnnk_model_options(again, text2, sizeof text2, NULL));
        CHECK(strcmp(text2, canonical) == 0, "options \"%s\" read back as \"%s\"", canonical, text2);
        OK(rnnk_model_free(again));
    }

    size_t np = 0, xl = 0, yl = 0, hl = 0, cl = 0;
    OK(rnnk_model_param_count(m, &np));
    OK(rnnk_model_tensor_sizes(m, T, B, &xl, &yl, &hl, &cl));
    const int lstm = cl > 0;
    float* params = read_f32("params.f32", np);
    float* x = read_f32("x.f32", xl);
    float* h0 = read_f32("h0.f32", hl);
    float* dy = read_f32("dy.f32", yl);
    float* dhn = read_f32("dhn.f32", hl);
    float* c0 = lstm ? read_f32("c0.f32", cl) : NULL;
    float* dcn = lstm ? read_f32("dcn.f32", cl) : NULL;
    const int64_t lengths[B] = {5, 2, 4};
    OK(rnnk_model_set_params(m, params, np));

    float *y = malloc(yl * sizeof(float)), *hn = malloc(hl * sizeof(float)), *cn = lstm ? malloc(cl * sizeof(float)) : NULL;
    OK(rnnk_forward(m, T, B, lengths, B, x, xl, h0, hl, c0, cl, y, yl, hn, hl, cn, cl));
    write_f32("y_inf", y, yl);
    write_f32("hn_inf", hn, hl);
    if (lstm) write_f32("cn_inf", cn, cl);

    rnnk_reserve* r = NULL;
    OK(rnnk_reserve_create(&r));
    if (strstr(canonical, "dropout") != NULL || strstr(canonical, "zoneout") != NULL) {
        /* dropout (also recurrent) and zoneout need the masks' seed and offset: the plain training call names them */
        FAILS(rnnk_forward_training(m, r, T, B, lengths, B, x, xl, h0, hl, c0, cl, y, yl, hn, hl, cn, cl), RNNK_ERR_INVALID_ARGUMENT,
              "`masks`");
    }
    /* the training pass with the masks of seed 7, offset 3 (not used without dropout or zoneout) */
    OK(rnnk_forward_training_masked(m, r, 7, 3, T, B, lengths, B, x, xl, h0, hl, c0, cl, y, yl, hn, hl, cn, cl));
    /* the same masks read back and supplied: the same outputs, bit for bit; other masks, others */
    {
        size_t count = 0, total = 0;
        OK(rnnk_mask_layout(m, T, B, NULL, 0, &count));
        size_t* layout = malloc((6 * count + 1) * sizeof(size_t));
        OK(rnnk_mask_layout(m, T, B, layout, 6 * count, NULL));
        for (size_t k = 0; k < count; ++k) {
            CHECK(layout[6 * k + 4] == B, "mask %zu: %zu rows, expected %d", k, layout[6 * k + 4], B);
            total += layout[6 * k + 3] * layout[6 * k + 4] * layout[6 * k + 5];
        }
        CHECK((count > 0) == (strstr(canonical, "dropout") != NULL || strstr(canonical, "zoneout") != NULL), "%zu masks for \"%s\"",
              count, canonical);
        if (count > 0) FAILS(rnnk_mask_layout(m, T, B, layout, 6 * count - 1, NULL), RNNK_ERR_SIZE_MISMATCH, "`out`");
        uint8_t* hits = malloc(total + 1);
        OK(rnnk_masks_read(m, T, B, 7, 3, hits, total));
        float* y2 = malloc(yl * sizeof(float));
        OK(rnnk_forward_training_with_masks(m, r, hits, total, T, B, lengths, B, x, xl, h0, hl, c0, cl, y2, yl, hn, hl, cn, cl));
        CHECK(memcmp(y, y2, yl * sizeof(float)) == 0, "the masks read back and supplied gave another y");
        if (total > 0) {
            FAILS(rnnk_forward_training_with_masks(m, r, hits, total - 1, T, B, lengths, B, x, xl, h0, hl, c0, cl, y2, yl, hn, hl, cn, cl),
                  RNNK_ERR_SIZE_MISMATCH, "`hits`");
            for (size_t k = 0; k < total; ++k) hits[k] = (uint8_t)(k % 2);
            OK(rnnk_forward_training_with_masks(m, r, hits, total, T, B, lengths, B, x, xl, h0, hl, c0, cl, y2, yl, hn, hl, cn, cl));
            CHECK(memcmp(y, y2, yl * sizeof(float)) != 0, "other supplied masks gave the same y");
        }
        /* the drawn masks' training pass again, for the outputs and gradients below */
        OK(rnnk_forward_training_masked(m, r, 7, 3, T, B, lengths, B, x, xl, h0, hl, c0, cl, y, yl, hn, hl, cn, cl));
        free(layout), free(hits), free(y2);
    }
    write_f32("y_tr", y, yl);
    write_f32("hn_tr", hn, hl);
    if (lstm) write_f32("cn_tr", cn, cl);

    float *dx = malloc(xl * sizeof(float)), *dh0 = malloc(hl * sizeof(float)), *dparams = malloc(np * sizeof(float));
    float* dc0 = lstm ? malloc(cl * sizeof(float)) : NULL;
    OK(rnnk_backward(m, r, dy, yl, dhn, hl, dcn, cl, dx, xl, dh0, hl, dc0, cl, dparams, np, 0));
    write_f32("dx", dx, xl);
    write_f32("dh0", dh0, hl);
    if (lstm) write_f32("dc0", dc0, cl);
    write_f32("dparams", dparams, np);

    /* the parameters through a safetensors file (its metadata carries the options): into a
     * second model with the same options they load as they were */
    {
        rnnk_model* loaded = NULL;
        float* back = malloc(np * sizeof(float));
        OK(rnnk_model_save_safetensors(m, path_of("saved.safetensors")));
        OK(rnnk_model_create_ex(cell, I, H, layers, bidirectional, 0, 1, options, backend, threads, &loaded));
        OK(rnnk_model_load_safetensors(loaded, path_of("saved.safetensors"), NULL, 0));
        OK(rnnk_model_get_params(loaded, back, np));
        CHECK(memcmp(back, params, np * sizeof(float)) == 0, "parameters saved and loaded back differ");
        OK(rnnk_model_free(loaded));
        free(back);
    }

    /* a wrong length still names the argument, with the shape the options give */
    FAILS(rnnk_forward(m, T, B, lengths, B, x, xl - 1, NULL, 0, NULL, 0, y, yl, NULL, 0, NULL, 0), RNNK_ERR_SIZE_MISMATCH, "`x`");
    FAILS(rnnk_forward(m, T, B, lengths, B, x, xl, NULL, 0, NULL, 0, y, yl + 1, NULL, 0, NULL, 0), RNNK_ERR_SIZE_MISMATCH, "`y`");

    OK(rnnk_reserve_free(r));
    OK(rnnk_model_free(m));
    free(params), free(x), free(h0), free(dy), free(dhn), free(c0), free(dcn), free(y), free(hn), free(cn);
    free(dx), free(dh0), free(dc0), free(dparams);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
