/*
 * Helpers shared by the stack tests that are not HTTP: clocks, running a
 * shell command, a tenant with its own key, reading a process's NUL-separated
 * /proc vectors (to restart a worker with its own command line).
 */
#ifndef TLY_TEST_UTIL_H
#define TLY_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/** Monotonic milliseconds. */
int64_t tly_test_now_ms(void);
/** Sleeps `ms`, resumed across signals. */
void tly_test_sleep_ms(int ms);

/**
 * Runs `cmd` with /bin/sh; fails the test unless it exits 0. The first line of
 * its output (without the newline) goes to `out` when `out` is not NULL.
 */
void tly_test_sh(const char *cmd, char *out, size_t cap);

/**
 * Creates a tenant named `prefix`-<pid>-<time> and a read/write key for it
 * with a contract rate of `rate`/s (burst the same) through $TALLY_BIN/tallyctl,
 * then waits (bounded) until the APIs accept the key.
 */
void tly_test_make_tenant(const char *prefix, int rate, char *tenant, size_t tenant_cap, char *key, size_t key_cap);

/** A TCP port on 127.0.0.1 that was free a moment ago (bound, read, released). */
int tly_test_free_port(void);

/**
 * Where a process the test starts itself logs: $TALLY_VAR/log/<name> against
 * the local stack, else ${TMPDIR:-/tmp}/<name> (a container of the compose
 * stack, which has no TALLY_VAR).
 */
void tly_test_log_path(const char *name, char *out, size_t cap);

/** The pid in $TALLY_VAR/run/<name>.pid (what the stack started), or 0. */
pid_t tly_test_read_pid(const char *name);

/** Writes `pid` to $TALLY_VAR/run/<name>.pid (atomically: a temporary file, then rename). */
void tly_test_write_pid(const char *name, pid_t pid);

/**
 * Starts argv[0] with `argv` and `envp`: its own session, stdin from
 * /dev/null, stdout and stderr appended to `log`, every other descriptor
 * closed (so it never holds ctest's pipes). `die_with_us`: killed when the
 * calling thread's process dies (PR_SET_PDEATHSIG); a process that must
 * outlive the test (the stack's own worker) passes false.
 */
pid_t tly_test_spawn(char *const *argv, char *const *envp, const char *log, bool die_with_us);

/** Reads a NUL-separated file (/proc/<pid>/cmdline, environ) into a NULL-ended vector; NULL when empty or unreadable. */
char **tly_test_read_nul_vector(const char *path);
/** Frees what tly_test_read_nul_vector returned (NULL is fine). */
void tly_test_free_nul_vector(char **v);

#endif
