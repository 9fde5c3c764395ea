/*
 * The checks of the C test programs (capi_test.c, capi_hardening.c): each counts, and a failed one
 * prints its file, line and message and makes the program's exit status nonzero
 * (`return failures != 0;`). Thread-safe: the counters and the report are under one mutex.
 */
#ifndef RNNK_TEST_CHECK_H
#define RNNK_TEST_CHECK_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks = 0, failures = 0;
static pthread_mutex_t report = PTHREAD_MUTEX_INITIALIZER;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        pthread_mutex_lock(&report);                                          \
        checks++;                                                             \
        if (!(cond)) {                                                        \
            failures++;                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, "\n");                                            \
        }                                                                     \
        pthread_mutex_unlock(&report);                                        \
    } while (0)

/* A call that must succeed, and leave no message behind. */
#define OK(call)                                                                                 \
    do {                                                                                         \
        int st_ = (call);                                                                        \
        CHECK(st_ == RNNK_OK, "%s -> %d: %s", #call, st_, rnnk_last_error());                    \
        CHECK(strcmp(rnnk_last_error(), "") == 0, "%s: message after success: %s", #call, rnnk_last_error()); \
    } while (0)

/* A call that must fail with `code` and a message containing `needle`. */
#define FAILS(call, code, needle)                                                                  \
    do {                                                                                           \
        int st_ = (call);                                                                          \
        const char* msg_ = rnnk_last_error();                                                      \
        CHECK(st_ == (code), "%s -> %d, expected %d (%s)", #call, st_, (code), msg_);              \
        CHECK(msg_ != NULL && strstr(msg_, (needle)) != NULL, "%s: message \"%s\" lacks \"%s\"", #call, msg_, (needle)); \
        if (getenv("CAPI_TEST_SHOW")) printf("%-28s %2d  %s\n", needle, st_, msg_);                \
    } while (0)

#endif
