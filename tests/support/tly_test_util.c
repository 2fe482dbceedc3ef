/* Non-HTTP helpers of the stack tests. See tly_test_util.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tly_test_http.h"
#include "tly_test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t
tly_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
tly_test_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void
tly_test_sh(const char *cmd, char *out, size_t cap)
{
    char line[512] = "";
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    if (out != NULL)
        out[0] = '\0';
    while (fgets(line, sizeof(line), p) != NULL)
        if (out != NULL && out[0] == '\0')
            snprintf(out, cap, "%s", line);
    assert_int_equal(pclose(p), 0);
    if (out != NULL)
        out[strcspn(out, "\r\n")] = '\0';
}

void
tly_test_make_tenant(const char *prefix, int rate, char *tenant, size_t tenant_cap, char *key, size_t key_cap)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "\"$TALLY_BIN/tallyctl\" tenants create --name %s-%d-%ld", prefix, (int)getpid(), (long)time(NULL));
    tly_test_sh(cmd, tenant, tenant_cap);
    snprintf(cmd, sizeof(cmd),
             "\"$TALLY_BIN/tallyctl\" keys create --tenant %s --scopes read,write --rate %d --burst %d 2>/dev/null", tenant, rate,
             rate);
    tly_test_sh(cmd, key, key_cap);
    /* each API loads new keys within a second: the query API's GET answers 200, and the command API gets past
       authentication to the body (415 for a POST without one: nothing is created) */
    for (int i = 0; i < 100; ++i) {
        tly_test_response_t r = tly_test_request("GET", "/v1/accounts?limit=1", key, NULL, NULL);
        tly_test_response_t w = tly_test_request("POST", "/v1/accounts", key, NULL, NULL);
        bool ready = r.status == 200 && w.status == 415;
        tly_test_response_free(&r);
        tly_test_response_free(&w);
        if (ready)
            return;
        tly_test_sleep_ms(100);
    }
    fail_msg("key of %s never became usable", tenant);
}

char **
tly_test_read_nul_vector(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 >= cap)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    buf[len] = '\0';
    size_t count = 0;
    for (size_t i = 0; i < len; ++i)
        count += buf[i] == '\0';
    char **v = calloc(count + 2, sizeof(*v));
    size_t k = 0;
    for (size_t i = 0; i < len; i += strlen(buf + i) + 1)
        v[k++] = buf + i;
    v[k] = NULL;
    if (k == 0) {
        free(v);
        free(buf);
        return NULL;
    }
    return v;
}

void
tly_test_free_nul_vector(char **v)
{
    if (v == NULL)
        return;
    free(v[0]); /* the buffer every element points into */
    free(v);
}

void
tly_test_write_pid(const char *name, pid_t pid)
{
    char path[1024], tmp[1100];
    const char *var = tly_test_env("TALLY_VAR");
    assert_non_null(var);
    snprintf(path, sizeof(path), "%s/run/%s.pid", var, name);
    snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fprintf(f, "%d\n", (int)pid);
    fclose(f);
    assert_int_equal(rename(tmp, path), 0);
}

pid_t
tly_test_spawn(char *const *argv, char *const *envp, const char *log, bool die_with_us)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setsid();
        if (die_with_us) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(126);
        }
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644), null = open("/dev/null", O_RDONLY);
        if (fd < 0 || null < 0)
            _exit(125);
        dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        for (int i = 3; i < 4096; ++i)
            close(i);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    return pid;
}

void
tly_test_log_path(const char *name, char *out, size_t cap)
{
    const char *var = tly_test_env("TALLY_VAR"), *tmp = getenv("TMPDIR");
    if (var != NULL)
        snprintf(out, cap, "%s/log/%s", var, name);
    else
        snprintf(out, cap, "%s/%s", tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp", name);
}

pid_t
tly_test_read_pid(const char *name)
{
    char path[1024];
    long pid = 0;
    const char *var = tly_test_env("TALLY_VAR");
    if (var == NULL)
        return 0;
    snprintf(path, sizeof(path), "%s/run/%s.pid", var, name);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return (pid_t)pid;
}

int
tly_test_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}
