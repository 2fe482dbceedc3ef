/* The JSON arenas of tallyctl replay (services/tallyctl/jarena.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "jarena.h"

#include <jansson.h>
#include <pthread.h>
#include <string.h>

/* Builds an event-shaped object (what envscan builds for `data`) on the calling thread. */
static json_t *
event_data(int i)
{
    json_t *o = json_pack("{s:s, s:I, s:s, s:n, s:b}", "account_id", "6b1f2e51-8c0d-4a3e-9f27-440b5da193c8", "amount",
                          (json_int_t)i, "currency", "EUR", "reference", "ok", 1);
    assert_non_null(o);
    return o;
}

static void
test_arena_serves_and_is_reused(void **state)
{
    tly_ctl_jarena_install();
    tly_ctl_jarena_t a;
    memset(&a, 0, sizeof(a));
    json_t *objs[5000];
    tly_ctl_jarena_use(&a);
    for (int i = 0; i < 5000; ++i)
        objs[i] = event_data(i);
    tly_ctl_jarena_use(NULL);
    assert_non_null(a.chunks);
    tly_ctl_jarena_chunk_t *first = a.chunks;
    for (int i = 0; i < 5000; ++i) { /* from the arena, and still readable after the thread left it */
        assert_true(tly_ctl_jarena_owns(&a, objs[i]));
        assert_int_equal(json_integer_value(json_object_get(objs[i], "amount")), i);
    }
    tly_ctl_jarena_skip_frees(true);
    for (int i = 0; i < 5000; ++i)
        json_decref(objs[i]);
    tly_ctl_jarena_skip_frees(false);
    tly_ctl_jarena_reset(&a);
    /* the next batch reuses the same memory */
    tly_ctl_jarena_use(&a);
    json_t *again = event_data(7);
    tly_ctl_jarena_use(NULL);
    assert_ptr_equal(a.chunks, first);
    assert_true(tly_ctl_jarena_owns(&a, again));
    assert_string_equal(json_string_value(json_object_get(again, "currency")), "EUR");
    tly_ctl_jarena_skip_frees(true);
    json_decref(again);
    tly_ctl_jarena_skip_frees(false);
    tly_ctl_jarena_free(&a);
    assert_null(a.chunks);
}

/* Outside an arena jansson allocates and frees as usual (ASan would see a free of arena memory or a leak). */
static void
test_outside_an_arena_nothing_changes(void **state)
{
    tly_ctl_jarena_install();
    tly_ctl_jarena_t a;
    memset(&a, 0, sizeof(a));
    for (int i = 0; i < 100; ++i) {
        json_t *o = event_data(i);
        assert_false(tly_ctl_jarena_owns(&a, o));
        char *s = json_dumps(o, JSON_COMPACT);
        assert_non_null(strstr(s, "\"currency\":\"EUR\""));
        free(s);
        json_decref(o);
    }
}

/* A value larger than a chunk gets a chunk of its own. */
static void
test_large_values(void **state)
{
    tly_ctl_jarena_install();
    tly_ctl_jarena_t a;
    memset(&a, 0, sizeof(a));
    static char big[3 << 20];
    memset(big, 'x', sizeof(big) - 1);
    tly_ctl_jarena_use(&a);
    json_t *s = json_string(big);
    json_t *small = event_data(1);
    tly_ctl_jarena_use(NULL);
    assert_int_equal(json_string_length(s), sizeof(big) - 1);
    assert_int_equal(json_integer_value(json_object_get(small, "amount")), 1);
    tly_ctl_jarena_skip_frees(true);
    json_decref(s);
    json_decref(small);
    tly_ctl_jarena_skip_frees(false);
    tly_ctl_jarena_free(&a);
}

typedef struct {
    tly_ctl_jarena_t a;
    json_t *objs[2000];
} per_thread_t;

static void *
fill(void *arg)
{
    per_thread_t *t = arg;
    tly_ctl_jarena_use(&t->a);
    for (int i = 0; i < 2000; ++i)
        t->objs[i] = event_data(i);
    tly_ctl_jarena_use(NULL);
    return NULL;
}

/* Parse threads each fill their own arena; another thread frees them all (as the replay's reader does). */
static void
test_threads(void **state)
{
    tly_ctl_jarena_install();
    static per_thread_t t[4];
    pthread_t th[4];
    memset(t, 0, sizeof(t));
    for (int i = 0; i < 4; ++i)
        assert_int_equal(pthread_create(&th[i], NULL, fill, &t[i]), 0);
    for (int i = 0; i < 4; ++i)
        pthread_join(th[i], NULL);
    tly_ctl_jarena_skip_frees(true);
    for (int i = 0; i < 4; ++i)
        for (int k = 0; k < 2000; ++k) {
            assert_int_equal(json_integer_value(json_object_get(t[i].objs[k], "amount")), k);
            json_decref(t[i].objs[k]);
        }
    tly_ctl_jarena_skip_frees(false);
    for (int i = 0; i < 4; ++i)
        tly_ctl_jarena_free(&t[i].a);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_serves_and_is_reused),
        cmocka_unit_test(test_outside_an_arena_nothing_changes),
        cmocka_unit_test(test_large_values),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
