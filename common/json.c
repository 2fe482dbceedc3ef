/* Strict parsing of untrusted JSON and small typed accessors. */
#include "tally/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
tly_json_depth(const json_t *v)
{
    int max = 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        json_object_foreach((json_t *)v, key, child)
        {
            int d = tly_json_depth(child);
            if (d > max)
                max = d;
        }
        return max + 1;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child)
        {
            int d = tly_json_depth(child);
            if (d > max)
                max = d;
        }
        return max + 1;
    }
    return 0;
}

/*
 * Counts the bracket depth on the raw text before handing it to jansson, so
 * that a hostile body of 60,000 '[' never recurses in the parser (jansson's
 * own limit is 2048, far deeper than any valid request).
 */
static bool
raw_depth_ok(const char *buf, size_t len)
{
    int depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; ++i) {
        char c = buf[i];
        if (in_string) {
            if (c == '\\')
                ++i;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > TLY_JSON_MAX_DEPTH)
                return false;
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
    return true;
}

tly_json_error_t
tly_json_parse_strict(const char *buf, size_t len, json_t **out, char *detail, size_t detail_cap)
{
    json_error_t jerr;
    *out = NULL;
    if (!raw_depth_ok(buf, len)) {
        if (detail != NULL)
            snprintf(detail, detail_cap, "nesting deeper than %d levels", TLY_JSON_MAX_DEPTH);
        return TLY_JSON_TOO_DEEP;
    }
    json_t *v = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (v == NULL) {
        bool dup = json_error_code(&jerr) == json_error_duplicate_key;
        if (detail != NULL)
            snprintf(detail, detail_cap, "%s at line %d, column %d", jerr.text, jerr.line, jerr.column);
        return dup ? TLY_JSON_DUPLICATE : TLY_JSON_SYNTAX;
    }
    *out = v;
    return TLY_JSON_OK;
}

const char *
tly_json_str(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

char *
tly_json_dump(const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (s == NULL)
        abort();
    return s;
}

size_t
tly_json_compact(const char *in, size_t len, char *out)
{
    size_t n = 0;
    bool in_string = false, escaped = false;
    for (size_t i = 0; i < len; ++i) {
        char c = in[i];
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
        } else if (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
            continue;
        } else if (c == '"') {
            in_string = true;
        }
        out[n++] = c;
    }
    return n;
}
