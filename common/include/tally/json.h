/*
 * JSON helpers over jansson: strict parsing of untrusted input and typed field
 * access. All functions here are pure (no I/O) and never print.
 */
#ifndef TALLY_JSON_H
#define TALLY_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_JSON_MAX_DEPTH 32

typedef enum en_tly_json_error_t {
    TLY_JSON_OK = 0,
    TLY_JSON_SYNTAX,    /* not JSON, invalid UTF-8, trailing garbage */
    TLY_JSON_DUPLICATE, /* an object repeats a key */
    TLY_JSON_TOO_DEEP,  /* nesting deeper than TLY_JSON_MAX_DEPTH */
} tly_json_error_t;

/**
 * Parses untrusted bytes. Rejects duplicate keys, invalid UTF-8, NUL bytes in
 * strings and nesting deeper than TLY_JSON_MAX_DEPTH. On success `*out` is a
 * new reference (caller decrefs). `detail` (optional) receives a message.
 */
tly_json_error_t tly_json_parse_strict(const char *buf, size_t len, json_t **out, char *detail, size_t detail_cap)
    __attribute__((warn_unused_result));

/** Nesting depth of a value: scalars are 0, `[]` is 1, `[[1]]` is 2. */
int tly_json_depth(const json_t *v);

/** The string member `key` of `obj`, or NULL when absent or not a string. Borrowed. */
const char *tly_json_str(const json_t *obj, const char *key);

/**
 * Serialises compactly with keys in insertion order. Caller frees. Aborts on
 * out-of-memory like every allocation in Tally.
 */
char *tly_json_dump(const json_t *v);

/**
 * Copies JSON text `in` (`len` bytes) into `out` (at least `len` bytes)
 * without the whitespace between tokens, so that text PostgreSQL wrote
 * (`{"id" : "x", "n" : 1}`) reads like tly_json_dump's (`{"id":"x","n":1}`):
 * one JSON style for every API. Strings are copied as they are. Returns the
 * length written.
 */
size_t tly_json_compact(const char *in, size_t len, char *out);

#endif
