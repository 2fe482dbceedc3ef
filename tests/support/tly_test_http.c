/* libcurl-based test client. See tly_test_http.h. */
#include "tly_test_http.h"

#include <ctype.h>
#include <pthread.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char env_file_buf[8192];
static bool env_loaded;

static void
load_env_file(void)
{
    const char *path = getenv("TALLY_TEST_ENV");
    env_loaded = true;
    if (path == NULL)
        return;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    size_t n = fread(env_file_buf, 1, sizeof(env_file_buf) - 1, f);
    env_file_buf[n] = '\0';
    fclose(f);
}

/* Values read from the env file, one copy per name for the life of the process (threads may ask too). */
static struct {
    char *name, *value;
} env_cache[64];
static pthread_mutex_t env_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *
remember(const char *name, const char *value)
{
    const char *kept = NULL;
    pthread_mutex_lock(&env_lock);
    size_t i = 0;
    for (; i < sizeof(env_cache) / sizeof(env_cache[0]) && env_cache[i].name != NULL; ++i)
        if (strcmp(env_cache[i].name, name) == 0)
            break;
    if (i < sizeof(env_cache) / sizeof(env_cache[0])) {
        if (env_cache[i].name == NULL) {
            env_cache[i].name = strdup(name);
            env_cache[i].value = strdup(value);
        }
        kept = env_cache[i].value;
    }
    pthread_mutex_unlock(&env_lock);
    if (kept == NULL)
        abort(); /* more names than the cache holds */
    return kept;
}

const char *
tly_test_env(const char *name)
{
    char value[1024];
    const char *v = getenv(name);
    if (v != NULL && v[0] != '\0')
        return v;
    if (!env_loaded)
        load_env_file();
    size_t nlen = strlen(name);
    for (const char *line = env_file_buf; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        if (len > nlen && strncmp(line, name, nlen) == 0 && line[nlen] == '=') {
            const char *start = line + nlen + 1;
            size_t vlen = len - nlen - 1;
            if (vlen >= 2 && (start[0] == '\'' || start[0] == '"') && start[vlen - 1] == start[0]) {
                ++start; /* the file may quote values for the shell */
                vlen -= 2;
            }
            snprintf(value, sizeof(value), "%.*s", (int)vlen, start);
            return remember(name, value);
        }
        line += len + (end != NULL ? 1 : 0);
    }
    return NULL;
}

const char *
tly_test_env_required(const char *name)
{
    const char *v = tly_test_env(name);
    if (v == NULL) {
        fprintf(stderr, "test setting %s is not set (environment, or the file TALLY_TEST_ENV names)\n", name);
        exit(1);
    }
    return v;
}

typedef struct {
    char *data;
    size_t len;
} buf_t;

static size_t
on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    buf_t *b = userdata;
    size_t n = size * nmemb;
    b->data = realloc(b->data, b->len + n + 1);
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static size_t
on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    size_t n = size * nmemb;
    char *colon = memchr(ptr, ':', n);
    for (char *p = ptr; colon != NULL && p < colon; ++p)
        *p = (char)tolower((unsigned char)*p);
    return on_data(ptr, size, nmemb, userdata);
}

tly_test_response_t
tly_test_request(const char *method, const char *path, const char *key, const char *body, const char *const *headers)
{
    char url[1024];
    const char *base = tly_test_env("TALLY_URL");
    if (base == NULL) {
        fprintf(stderr, "TALLY_URL is not set (and no TALLY_TEST_ENV file gives it)\n");
        abort();
    }
    snprintf(url, sizeof(url), "%s%s", base, path);
    return tly_test_request_url(method, url, key, body, headers);
}

tly_test_response_t
tly_test_request_url(const char *method, const char *url, const char *key, const char *body, const char *const *headers)
{
    tly_test_response_t r = {0};
    buf_t b = {0}, h = {0};
    char auth[256];
    CURL *c = curl_easy_init();
    struct curl_slist *list = NULL;
    if (key != NULL) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key);
        list = curl_slist_append(list, auth);
    }
    if (body != NULL)
        list = curl_slist_append(list, "Content-Type: application/json");
    for (size_t i = 0; headers != NULL && headers[i] != NULL; ++i)
        list = curl_slist_append(list, headers[i]);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 40000L);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) {
        fprintf(stderr, "%s %s: %s\n", method, url, curl_easy_strerror(rc));
        abort();
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(list);
    curl_easy_cleanup(c);
    r.body = b.data != NULL ? b.data : strdup("");
    r.body_len = b.len;
    r.headers = h.data != NULL ? h.data : strdup("");
    json_error_t jerr;
    r.json = r.body_len > 0 ? json_loads(r.body, 0, &jerr) : NULL;
    return r;
}

void
tly_test_response_free(tly_test_response_t *r)
{
    free(r->body);
    free(r->headers);
    json_decref(r->json);
    memset(r, 0, sizeof(*r));
}

bool
tly_test_header(const tly_test_response_t *r, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    for (const char *line = r->headers; *line != '\0';) {
        const char *end = strstr(line, "\r\n");
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        if (len > nlen && strncmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ')
                ++v;
            snprintf(out, cap, "%.*s", (int)(len - (size_t)(v - line)), v);
            return true;
        }
        line += len + (end != NULL ? 2 : 0);
    }
    return false;
}

json_t *
tly_test_wait_job(const char *job_url, const char *key, int timeout_ms)
{
    json_t *job = NULL;
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        tly_test_response_t r = tly_test_request("GET", job_url, key, NULL, NULL);
        json_decref(job);
        job = r.status == 200 ? json_incref(r.json) : NULL;
        tly_test_response_free(&r);
        const char *status = job != NULL ? json_string_value(json_object_get(job, "status")) : NULL;
        if (status != NULL && (strcmp(status, "succeeded") == 0 || strcmp(status, "failed") == 0))
            return job;
        usleep(50 * 1000);
    }
    return job;
}

void
tly_test_idem_header(char *out, size_t cap)
{
    static unsigned counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(out, cap, "Idempotency-Key: test-%ld-%ld-%d-%u", (long)ts.tv_sec, ts.tv_nsec, getpid(), ++counter);
}

size_t
tly_test_sink_write(char *ptr, size_t size, size_t nmemb, void *sink)
{
    tly_test_sink_t *s = sink;
    size_t len = size * nmemb, room = sizeof(s->data) - 1 - s->len, take = len < room ? len : room;
    memcpy(s->data + s->len, ptr, take);
    s->len += take;
    s->data[s->len] = '\0';
    return len;
}
