/*
 * The C ABI's promises under hostile input, driven by capi/tests/c_program.rs (and by
 * .ci/asan.sh under valgrind and AddressSanitizer):
 *
 *     capi_hardening DIR BACKEND THREADS FEATURE
 *
 * Self-contained (it makes its own models, buffers and files in DIR). It checks:
 *   - every length is checked before its buffer is touched: each buffer below is a malloc'd
 *     block of exactly the right size, passed with a larger length (a read or write past it
 *     is what valgrind and AddressSanitizer report);
 *   - absurd sizes are RNNK_ERR_OUT_OF_MEMORY (or a size error), never an allocation abort;
 *   - an output overlapping any other buffer of the call (`lengths` included) is rejected;
 *   - every status code of the header, provoked through the C ABI where an input can provoke it;
 *   - concurrent calls on one model from many threads: bit-identical to one thread, and calls
 *     that change a model while others use it are refused with RNNK_ERR_BUSY, never a race.
 * FEATURE is "cuda" or "nocuda", as for capi_test.c. Exit status 0 iff every check passed.
 */
/* nanosleep */
#define _POSIX_C_SOURCE 200809L

#include "rnn_kernels.h"
#include "check.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char* dir;
static const char* backend;
static size_t threads;

static char* path_of(const char* name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

/* Uniform values in [-1, 1) from a fixed generator. */
static float* values(size_t n, uint64_t seed) {
    float* v = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        v[i] = (float)((double)(seed >> 40) / (double)(1ULL << 24) * 2.0 - 1.0);
    }
    return v;
}

/* Writes a safetensors file: the JSON header `json`, then `data`. */
static void write_safetensors(const char* name, const char* json, const void* data, size_t bytes) {
    FILE* f = fopen(path_of(name), "wb");
    uint64_t n = strlen(json);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(n >> (8 * i));
    if (!f || fwrite(len, 1, 8, f) != 8 || fwrite(json, 1, n, f) != n || (bytes && fwrite(data, 1, bytes, f) != bytes)) {
        fprintf(stderr, "cannot write %s\n", path_of(name));
        exit(2);
    }
    fclose(f);
}

/* ---- the model of the thread tests: a 2-layer bidirectional LSTM ---- */
enum { I = 4, H = 6, L = 2, T = 7, B = 3 };
enum { XL = T * B * I, YL = T * B * 2 * H, HL = L * 2 * B * H };
static const int64_t LENGTHS[B] = {7, 3, 5};

struct work {
    const rnnk_model* m;
    rnnk_reserve* r; /* shared by the backward threads; NULL for forward threads */
    const float *x, *h0, *c0, *dy;
    int iters;
    const float* want; /* y (forward) or dparams (backward), from one thread */
    size_t want_len;
    int mismatches, busy, errors;
};

static void* forward_thread(void* arg) {
    struct work* w = arg;
    float *y = malloc(YL * sizeof(float)), *hn = malloc(HL * sizeof(float)), *cn = malloc(HL * sizeof(float));
    for (int k = 0; k < w->iters; k++) {
        int st = rnnk_forward(w->m, T, B, LENGTHS, B, w->x, XL, w->h0, HL, w->c0, HL, y, YL, hn, HL, cn, HL);
        if (st == RNNK_ERR_BUSY) w->busy++;
        else if (st != RNNK_OK) w->errors++;
        else if (memcmp(y, w->want, YL * sizeof(float)) != 0) w->mismatches++;
    }
    free(y), free(hn), free(cn);
    return NULL;
}

static void* backward_thread(void* arg) {
    struct work* w = arg;
    float* dparams = malloc(w->want_len * sizeof(float));
    float* dx = malloc(XL * sizeof(float));
    for (int k = 0; k < w->iters; k++) {
        int st = rnnk_backward(w->m, w->r, w->dy, YL, NULL, 0, NULL, 0, dx, XL, NULL, 0, NULL, 0, dparams, w->want_len, 0);
        if (st == RNNK_ERR_BUSY && strstr(rnnk_last_error(), "`reserve`") != NULL) w->busy++;
        else if (st != RNNK_OK) w->errors++;
        else if (memcmp(dparams, w->want, w->want_len * sizeof(float)) != 0) w->mismatches++;
    }
    free(dparams), free(dx);
    return NULL;
}

/* Forward and backward from 16 threads on one model (and one reserve): every result
 * bit-identical to the same call made alone. Meanwhile the main thread refills the reserve
 * (with the same inputs): each refill runs only while no backward uses the reserve, and a
 * backward that comes during a refill is refused with RNNK_ERR_BUSY; forward calls, which do not
 * use the reserve, are never refused. */
static void threads_share_a_model(void) {
    enum { N = 16, ITERS = 8 };
    rnnk_model* m = NULL;
    OK(rnnk_model_create("lstm", I, H, L, 1, 0, 1, backend, threads, &m));
    size_t np = 0;
    OK(rnnk_model_param_count(m, &np));
    float *x = values(XL, 1), *h0 = values(HL, 2), *c0 = values(HL, 3), *dy = values(YL, 4);
    float *y1 = malloc(YL * sizeof(float)), *dp1 = malloc(np * sizeof(float)), *scratch = malloc(YL * sizeof(float));
    OK(rnnk_forward(m, T, B, LENGTHS, B, x, XL, h0, HL, c0, HL, y1, YL, NULL, 0, NULL, 0));
    rnnk_reserve* r = NULL;
    OK(rnnk_reserve_create(&r));
    OK(rnnk_forward_training(m, r, T, B, LENGTHS, B, x, XL, h0, HL, c0, HL, scratch, YL, NULL, 0, NULL, 0));
    OK(rnnk_backward(m, r, dy, YL, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, dp1, np, 0));

    pthread_t tid[N];
    struct work w[N];
    for (int i = 0; i < N; i++) {
        int bwd = i % 2;
        w[i] = (struct work){m, bwd ? r : NULL, x, h0, c0, dy, ITERS, bwd ? dp1 : y1, bwd ? np : YL, 0, 0, 0};
        pthread_create(&tid[i], NULL, bwd ? backward_thread : forward_thread, &w[i]);
    }
    int refills = 0, refused = 0, refused_backward = 0;
    for (int k = 0; k < 20; k++) {
        int st = rnnk_forward_training(m, r, T, B, LENGTHS, B, x, XL, h0, HL, c0, HL, scratch, YL, NULL, 0, NULL, 0);
        refills += st == RNNK_OK;
        refused += st == RNNK_ERR_BUSY;
        CHECK(st == RNNK_OK || (st == RNNK_ERR_BUSY && strstr(rnnk_last_error(), "`reserve`") != NULL),
              "rnnk_forward_training while backward runs -> %d (%s)", st, rnnk_last_error());
    }
    for (int i = 0; i < N; i++) {
        pthread_join(tid[i], NULL);
        int bwd = i % 2;
        refused_backward += w[i].busy;
        CHECK(w[i].errors == 0 && w[i].mismatches == 0 && (bwd || w[i].busy == 0),
              "thread %d (%s): %d errors, %d refused, %d results differ from one thread's", i, bwd ? "backward" : "forward", w[i].errors,
              w[i].busy, w[i].mismatches);
    }
    printf("%d threads x %d calls on one model: bit-identical to one thread; meanwhile %d refills of the reserve ran, %d were "
           "refused busy, %d backward calls were refused busy\n",
           N, ITERS, refills, refused, refused_backward);
    OK(rnnk_reserve_free(r));
    OK(rnnk_model_free(m));
    free(x), free(h0), free(c0), free(dy), free(y1), free(dp1), free(scratch);
}

struct setter {
    rnnk_model* m;
    const float *p1, *p2;
    size_t np;
    volatile int stop;
    int ok, busy, other;
};

static void* set_params_thread(void* arg) {
    struct setter* s = arg;
    for (int k = 0; !s->stop; k++) {
        int st = rnnk_model_set_params(s->m, k % 2 ? s->p2 : s->p1, s->np);
        if (st == RNNK_OK) s->ok++;
        else if (st == RNNK_ERR_BUSY && strstr(rnnk_last_error(), "`model`") != NULL) s->busy++;
        else s->other++;
        /* A gap between calls, as in the forward loop below. */
        struct timespec gap = {0, 100000};
        nanosleep(&gap, NULL);
    }
    return NULL;
}

/* rnnk_model_set_params from one thread while another runs rnnk_forward on the model: each call
 * either runs alone or returns RNNK_ERR_BUSY; every forward that ran saw one whole set of
 * parameters (its y is y(p1) or y(p2), bit for bit). */
static void set_params_races_with_forward(void) {
    rnnk_model* m = NULL;
    OK(rnnk_model_create("lstm", I, H, L, 1, 0, 1, backend, threads, &m));
    size_t np = 0;
    OK(rnnk_model_param_count(m, &np));
    float *p1 = values(np, 11), *p2 = values(np, 12), *x = values(XL, 13);
    float *y1 = malloc(YL * sizeof(float)), *y2 = malloc(YL * sizeof(float)), *y = malloc(YL * sizeof(float));
    OK(rnnk_model_set_params(m, p2, np));
    OK(rnnk_forward(m, T, B, NULL, 0, x, XL, NULL, 0, NULL, 0, y2, YL, NULL, 0, NULL, 0));
    OK(rnnk_model_set_params(m, p1, np));
    OK(rnnk_forward(m, T, B, NULL, 0, x, XL, NULL, 0, NULL, 0, y1, YL, NULL, 0, NULL, 0));

    struct setter s = {m, p1, p2, np, 0, 0, 0, 0};
    pthread_t tid;
    pthread_create(&tid, NULL, set_params_thread, &s);
    int ran = 0, busy = 0, torn = 0, other = 0;
    time_t start = time(NULL);
    /* Until both sides have run and one has found the other busy (or 60 s). Each loop leaves a
     * gap between its calls, so that neither holds the model whenever the other is scheduled
     * where the threads take turns on one CPU (valgrind runs one thread at a time). Which side
     * meets the other mid-call depends on the scheduler, so the check asks for a refusal on
     * either side. */
    for (int k = 0; (k < 200 || busy + s.busy == 0 || ran == 0 || s.ok == 0) && time(NULL) - start < 60; k++) {
        int st = rnnk_forward(m, T, B, NULL, 0, x, XL, NULL, 0, NULL, 0, y, YL, NULL, 0, NULL, 0);
        struct timespec gap = {0, 100000};
        nanosleep(&gap, NULL);
        if (st == RNNK_OK) {
            ran++;
            torn += memcmp(y, y1, YL * sizeof(float)) != 0 && memcmp(y, y2, YL * sizeof(float)) != 0;
        } else if (st == RNNK_ERR_BUSY && strstr(rnnk_last_error(), "`model`") != NULL) {
            busy++;
        } else {
            other++;
        }
    }
    s.stop = 1;
    pthread_join(tid, NULL);
    printf("set_params vs forward: %d forwards ran, %d refused busy; %d set_params ran, %d refused busy\n", ran, busy, s.ok, s.busy);
    CHECK(torn == 0, "%d forwards saw neither parameter set whole", torn);
    CHECK(other == 0 && s.other == 0, "unexpected status codes: %d (forward), %d (set_params)", other, s.other);
    CHECK(busy + s.busy > 0, "RNNK_ERR_BUSY was never returned (forward %d, set_params %d)", busy, s.busy);
    CHECK(ran > 0 && s.ok > 0, "a side never ran (forward %d, set_params %d)", ran, s.ok);
    OK(rnnk_model_free(m));
    free(p1), free(p2), free(x), free(y1), free(y2), free(y);
}

int main(int argc, char** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DIR BACKEND THREADS FEATURE\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    backend = argv[2];
    threads = (size_t)strtoul(argv[3], NULL, 10);
    const int has_cuda = strcmp(argv[4], "cuda") == 0;
    printf("rnn-kernels %s, backend %s, %zu thread(s)\n", rnnk_version(), backend, threads);

    rnnk_model* m = NULL;
    OK(rnnk_model_create("lstm", I, H, L, 1, 0, 1, backend, threads, &m));
    size_t np = 0;
    OK(rnnk_model_param_count(m, &np));
    /* Every buffer holds exactly what its call needs: a read or write past it is an error that
     * valgrind and AddressSanitizer report. */
    float *p = values(np, 5), *x = values(XL, 6), *y = values(YL, 7), *hn = values(HL, 8), *cn = values(HL, 9);
    float* before = malloc(np * sizeof(float));
    OK(rnnk_model_get_params(m, before, np));

    /* ---- every length is checked before its buffer is touched ---- */
    FAILS(rnnk_model_set_params(m, p, np + 4096), RNNK_ERR_SIZE_MISMATCH, "`params`: expected the flat parameter layout");
    FAILS(rnnk_model_set_params(m, p, (size_t)1 << 60), RNNK_ERR_SIZE_MISMATCH, "`params`");
    FAILS(rnnk_model_set_params(m, p, SIZE_MAX), RNNK_ERR_INVALID_ARGUMENT, "`params_len`");
    FAILS(rnnk_model_get_params(m, p, np + 4096), RNNK_ERR_SIZE_MISMATCH, "`params`");
    FAILS(rnnk_model_set_params_device(m, p, np + 4096, NULL), RNNK_ERR_SIZE_MISMATCH, "`params`");
    FAILS(rnnk_model_get_params_device(m, p, (size_t)1 << 60, NULL), RNNK_ERR_SIZE_MISMATCH, "`params`");
    FAILS(rnnk_forward(m, T, B, NULL, 0, x, XL + 4096, NULL, 0, NULL, 0, y, YL, NULL, 0, NULL, 0), RNNK_ERR_SIZE_MISMATCH, "`x`");
    FAILS(rnnk_forward(m, T, B, NULL, 0, x, XL, NULL, 0, NULL, 0, y, YL + 4096, NULL, 0, NULL, 0), RNNK_ERR_SIZE_MISMATCH, "`y`");
    FAILS(rnnk_forward(m, T, B, NULL, 0, x, XL, NULL, 0, NULL, 0, y, YL, hn, (size_t)1 << 60, NULL, 0), RNNK_ERR_SIZE_MISMATCH, "`hn`");
    FAILS(rnnk_forward(m, T, B, LENGTHS, B + 4096, x, XL, NULL, 0, NULL, 0, y, YL, NULL, 0, NULL, 0), RNNK_ERR_SIZE_MISMATCH,
          "`lengths`");
    {
        rnnk_reserve* r = NULL;
        OK(rnnk_reserve_create(&r));
        OK(rnnk_forward_training(m, r, T, B, LENGTHS, B, x, XL, NULL, 0, NULL, 0, y, YL, NULL, 0, NULL, 0));
        float* dp = values(np, 10);
        FAILS(rnnk_backward(m, r, y, YL, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, dp, np + 4096, 1), RNNK_ERR_SIZE_MISMATCH,
              "`dparams`");
        FAILS(rnnk_backward(m, r, y, YL + 4096, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, dp, np, 1), RNNK_ERR_SIZE_MISMATCH, "`dy`");
        free(dp);
        OK(rnnk_reserve_free(r));
    }
    float* after = malloc(np * sizeof(float));
    OK(rnnk_model_get_params(m, after, np));
    CHECK(memcmp(before, after, np * sizeof(float)) == 0, "a rejected call changed the parameters");

    /* ---- absurd sizes: an error naming the sizes, never an allocation abort ---- */
    {
        rnnk_model* big = (rnnk_model*)&np; /* must be set to NULL on failure */
        FAILS(rnnk_model_create("lstm", 1 << 20, 1 << 20, 1, 0, 0, 1, backend, threads, &big), RNNK_ERR_OUT_OF_MEMORY,
              "`input_size, hidden_size, num_layers`: needs ");
        CHECK(big == NULL, "*out is not NULL after a failed rnnk_model_create");
        FAILS(rnnk_model_create("rnn_tanh", 1, 1, (size_t)1 << 40, 1, 0, 1, backend, threads, &big), RNNK_ERR_OUT_OF_MEMORY,
              "num_layers 1099511627776");
        FAILS(rnnk_model_create("gru", (size_t)1 << 62, (size_t)1 << 62, 1, 0, 0, 1, backend, threads, &big), RNNK_ERR_INVALID_ARGUMENT,
              "hidden_size");
        size_t xl = 0;
        FAILS(rnnk_model_tensor_sizes(m, SIZE_MAX / 2, 4, &xl, NULL, NULL, NULL), RNNK_ERR_INVALID_ARGUMENT, "`steps, batch`");
    }

    /* ---- overlaps: an output may share memory with no other buffer of the call ---- */
    {
        /* y holds T*B*2H floats; the lengths (B int64) are placed inside it, then inside hn, cn. */
        int64_t* in_y = (int64_t*)(void*)(y + 8);
        memcpy(in_y, LENGTHS, sizeof LENGTHS);
        FAILS(rnnk_forward(m, T, B, in_y, B, x, XL, NULL, 0, NULL, 0, y, YL, NULL, 0, NULL, 0), RNNK_ERR_INVALID_ARGUMENT,
              "`lengths`: memory that does not overlap `y`");
        int64_t* in_hn = (int64_t*)(void*)(hn + 2);
        memcpy(in_hn, LENGTHS, sizeof LENGTHS);
        FAILS(rnnk_forward(m, T, B, in_hn, B, x, XL, NULL, 0, NULL, 0, y, YL, hn, HL, NULL, 0), RNNK_ERR_INVALID_ARGUMENT,
              "`lengths`: memory that does not overlap `hn`");
        int64_t* in_cn = (int64_t*)(void*)(cn + 4);
        memcpy(in_cn, LENGTHS, sizeof LENGTHS);
        rnnk_reserve* r = NULL;
        OK(rnnk_reserve_create(&r));
        FAILS(rnnk_forward_training(m, r, T, B, in_cn, B, x, XL, NULL, 0, NULL, 0, y, YL, NULL, 0, cn, HL), RNNK_ERR_INVALID_ARGUMENT,
              "`lengths`: memory that does not overlap `cn`");
        FAILS(rnnk_forward_device(m, T, B, in_y, B, x, XL, NULL, 0, NULL, 0, y, YL, NULL, 0, NULL, 0, NULL), RNNK_ERR_INVALID_ARGUMENT,
              "`lengths`: memory that does not overlap `y`");
        /* outputs with each other, inputs with outputs */
        FAILS(rnnk_forward(m, T, B, LENGTHS, B, x, XL, NULL, 0, NULL, 0, y, YL, y + YL - HL, HL, NULL, 0), RNNK_ERR_INVALID_ARGUMENT,
              "`y`: memory that does not overlap `hn`");
        float* two_h = values(2 * HL, 14);
        FAILS(rnnk_forward(m, T, B, LENGTHS, B, x, XL, NULL, 0, NULL, 0, y, YL, two_h, HL, two_h + HL - 1, HL), RNNK_ERR_INVALID_ARGUMENT,
              "`hn`: memory that does not overlap `cn`");
        FAILS(rnnk_forward(m, T, B, LENGTHS, B, y + 1, XL, NULL, 0, NULL, 0, y, YL, NULL, 0, NULL, 0), RNNK_ERR_INVALID_ARGUMENT,
              "`x`: memory that does not overlap `y`");
        FAILS(rnnk_forward(m, T, B, LENGTHS, B, x, XL, cn, HL, NULL, 0, y, YL, NULL, 0, cn, HL), RNNK_ERR_INVALID_ARGUMENT,
              "`h0`: memory that does not overlap `cn`");
        /* inputs may overlap each other */
        OK(rnnk_forward(m, T, B, LENGTHS, B, x, XL, hn, HL, hn, HL, y, YL, NULL, 0, NULL, 0));
        OK(rnnk_forward_training(m, r, T, B, LENGTHS, B, x, XL, NULL, 0, NULL, 0, y, YL, NULL, 0, NULL, 0));
        float* dp = malloc(np * sizeof(float));
        FAILS(rnnk_backward(m, r, dp, YL, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, dp, np, 0), RNNK_ERR_INVALID_ARGUMENT,
              "does not overlap");
        FAILS(rnnk_backward(m, r, NULL, 0, NULL, 0, NULL, 0, x, XL, two_h, HL, two_h + 1, HL, NULL, 0, 0), RNNK_ERR_INVALID_ARGUMENT,
              "`dh0`: memory that does not overlap `dc0`");
        FAILS(rnnk_backward(m, r, NULL, 0, cn, HL, NULL, 0, NULL, 0, NULL, 0, cn, HL, NULL, 0, 0), RNNK_ERR_INVALID_ARGUMENT,
              "`dhn`: memory that does not overlap `dc0`");
        size_t same = 0;
        FAILS(rnnk_model_tensor_sizes(m, T, B, &same, NULL, &same, NULL), RNNK_ERR_INVALID_ARGUMENT, "`x_len`: memory that does not overlap `h_len`");
        free(dp), free(two_h);
        OK(rnnk_reserve_free(r));
    }

    /* ---- files: IO when it cannot be read, FILE_FORMAT for anything about its content ---- */
    {
        rnnk_model* t = NULL; /* rnn_tanh, I = H = 1, no bias: weight_ih_l0 [1, 1], weight_hh_l0 [1, 1] */
        OK(rnnk_model_create("rnn_tanh", 1, 1, 1, 0, 0, 0, backend, threads, &t));
        const float two[2] = {0.25f, -0.5f};
        write_safetensors("good.safetensors",
                          "{\"weight_ih_l0\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]},"
                          "\"weight_hh_l0\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[4,8]}}",
                          two, 8);
        write_safetensors("dtype.safetensors",
                          "{\"weight_ih_l0\":{\"dtype\":\"I32\",\"shape\":[1,1],\"data_offsets\":[0,4]},"
                          "\"weight_hh_l0\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[4,8]}}",
                          two, 8);
        write_safetensors("shape.safetensors",
                          "{\"weight_ih_l0\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"weight_hh_l0\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[8,12]}}",
                          (const float[3]){1, 2, 3}, 12);
        write_safetensors("offsets.safetensors",
                          "{\"weight_ih_l0\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]},"
                          "\"weight_hh_l0\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[4,1000000]}}",
                          two, 8);
        write_safetensors("header.safetensors", "{\"weight_ih_l0\":", NULL, 0);
        {
            /* a header length of 2^62 in a 16-byte file */
            FILE* f = fopen(path_of("huge_header.safetensors"), "wb");
            const unsigned char bytes[16] = {0, 0, 0, 0, 0, 0, 0, 0x40, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
            if (!f || fwrite(bytes, 1, 16, f) != 16) exit(2);
            fclose(f);
        }
        float got[2];
        OK(rnnk_model_load_safetensors(t, path_of("good.safetensors"), NULL, 0));
        OK(rnnk_model_get_params(t, got, 2));
        CHECK(got[0] == 0.25f && got[1] == -0.5f, "loaded %g %g", got[0], got[1]);
        FAILS(rnnk_model_load_safetensors(t, path_of("dtype.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "weight_ih_l0");
        FAILS(rnnk_model_load_safetensors(t, path_of("dtype.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "I32");
        FAILS(rnnk_model_load_safetensors(t, path_of("shape.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "shape [1, 1]");
        FAILS(rnnk_model_load_safetensors(t, path_of("offsets.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "offsets.safetensors");
        FAILS(rnnk_model_load_safetensors(t, path_of("header.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "header.safetensors");
        FAILS(rnnk_model_load_safetensors(t, path_of("huge_header.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "huge_header");
        /* another cell's tensors: a GRU has weight_ih_l0 [3, 1] */
        rnnk_model* g = NULL;
        OK(rnnk_model_create("gru", 1, 1, 1, 0, 0, 0, backend, threads, &g));
        FAILS(rnnk_model_load_safetensors(g, path_of("good.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "weight_ih_l0");
        /* another configuration's: a unidirectional file for a bidirectional model */
        rnnk_model* bi = NULL;
        OK(rnnk_model_create("rnn_tanh", 1, 1, 1, 1, 0, 0, backend, threads, &bi));
        FAILS(rnnk_model_load_safetensors(bi, path_of("good.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "weight_ih_l0_reverse");
        FAILS(rnnk_model_load_safetensors(t, path_of("no_such.safetensors"), NULL, 0), RNNK_ERR_IO, "no_such.safetensors");
        FAILS(rnnk_model_load_safetensors(t, dir, NULL, 0), RNNK_ERR_IO, dir);
        FAILS(rnnk_model_save_safetensors(t, path_of("no_such_dir/out.safetensors")), RNNK_ERR_IO, "no_such_dir");
        OK(rnnk_model_get_params(t, got, 2));
        CHECK(got[0] == 0.25f && got[1] == -0.5f, "a failed load changed the parameters: %g %g", got[0], got[1]);
        OK(rnnk_model_free(bi));
        OK(rnnk_model_free(g));
        OK(rnnk_model_free(t));
    }

    /* ---- every status code of the header, through the C ABI ---- */
    {
        size_t n = 0;
        OK(rnnk_model_param_count(m, &n));                                                                  /* RNNK_OK */
        FAILS(rnnk_model_param_count(m, NULL), RNNK_ERR_NULL_POINTER, "`out`");                            /* 1 */
        rnnk_model* bad = (rnnk_model*)&n;
        FAILS(rnnk_model_create("lstn", 1, 1, 1, 0, 0, 1, backend, 1, &bad), RNNK_ERR_INVALID_ARGUMENT, "lstn"); /* 2 */
        CHECK(bad == NULL, "*out not NULL after a failed create");
        FAILS(rnnk_model_set_params(m, p, np - 1), RNNK_ERR_SIZE_MISMATCH, "`params`"); /* 3 */
        rnnk_model* freed = NULL;
        OK(rnnk_model_create("gru", 1, 1, 1, 0, 0, 1, backend, threads, &freed));
        OK(rnnk_model_free(freed));
        FAILS(rnnk_model_param_count(freed, &n), RNNK_ERR_WRONG_HANDLE, "`model`"); /* 4 */
        if (!has_cuda) {
            rnnk_model* c = NULL; /* 5 */
            FAILS(rnnk_model_create("lstm", 1, 1, 1, 0, 0, 1, "cuda", 0, &c), RNNK_ERR_BACKEND_UNAVAILABLE, "cuda");
            FAILS(rnnk_forward_device(m, T, B, NULL, 0, x, XL, NULL, 0, NULL, 0, y, YL, NULL, 0, NULL, 0, NULL),
                  RNNK_ERR_BACKEND_UNAVAILABLE, "`model`");
        }
        FAILS(rnnk_model_load_safetensors(m, path_of("no_such.safetensors"), NULL, 0), RNNK_ERR_IO, "no_such"); /* 6 */
        FAILS(rnnk_model_load_safetensors(m, path_of("dtype.safetensors"), NULL, 0), RNNK_ERR_FILE_FORMAT, "weight_ih_l0"); /* 7 */
        /* 8 (RNNK_ERR_DEVICE) needs a CUDA call that fails at run time and 9 (RNNK_ERR_PANIC) a
         * bug: no argument provokes either; the unit tests of status.rs cover their mapping. */
        rnnk_model* big = NULL;
        FAILS(rnnk_model_create("lstm", 1 << 20, 1 << 20, 1, 0, 0, 1, backend, threads, &big), RNNK_ERR_OUT_OF_MEMORY, "needs"); /* 10 */
        /* 11 (RNNK_ERR_BUSY): below, from two threads. */
        /* 12 (RNNK_ERR_UNSUPPORTED): capi_options.c, on each backend that refuses an option of its
         * models (the Rust API says which); the unit tests of status.rs cover its mapping. */
    }

    threads_share_a_model();
    set_params_races_with_forward();

    OK(rnnk_model_free(m));
    free(p), free(x), free(y), free(hn), free(cn), free(before), free(after);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
