/* pq_proc.c - process identity (pid + start time) and liveness checks. */
#define _GNU_SOURCE
#include "pq_proc.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pq_proc_id pq_self_cache;
static int pq_self_valid; /* only touched with the GIL / by one thread at a time per process */
static pthread_once_t pq_atfork_once = PTHREAD_ONCE_INIT;
unsigned pq_proc_forks;

static void pq_proc_forget_self(void)
{
    /* In the child of fork(): the cached identity is the parent's. */
    pq_self_valid = 0;
    pq_proc_forks++;
}

static void pq_proc_register_atfork(void)
{
    pthread_atfork(NULL, NULL, pq_proc_forget_self);
}

/*
 * Read /proc/PID/stat and return the state letter and start time.
 * The command name (field 2) is in parentheses and may contain spaces or
 * parentheses itself, so parsing starts after the last ')'.
 */
static int pq_proc_read_stat(int32_t pid, char *state, uint64_t *start_time)
{
    char path[64];
    char buf[1024];
    int fd;
    ssize_t n;

    if (pid <= 0)
        return -EINVAL;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ESRCH : -errno;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return n == 0 ? -ESRCH : -errno;
    buf[n] = '\0';

    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ')
        return -EPROTO;
    p += 2; /* now at field 3, the state */
    *state = *p;
    /* Skip fields 3..21 to reach field 22 (starttime). */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL)
            return -EPROTO;
        p++;
    }
    char *end;
    unsigned long long v = strtoull(p, &end, 10);
    if (end == p)
        return -EPROTO;
    *start_time = (uint64_t)v;
    return 0;
}

int pq_proc_start_time(int32_t pid, uint64_t *out)
{
    char state;
    int rc = pq_proc_read_stat(pid, &state, out);
    if (rc < 0)
        return rc;
    if (state == 'Z' || state == 'X')
        return -ESRCH;
    return 0;
}

int pq_proc_self(pq_proc_id *out)
{
    pthread_once(&pq_atfork_once, pq_proc_register_atfork);
    if (!pq_self_valid) {
        pq_proc_id id;
        id.pid = (int32_t)getpid();
        int rc = pq_proc_start_time(id.pid, &id.start_time);
        if (rc < 0)
            return rc;
        pq_self_cache = id;
        pq_self_valid = 1;
    }
    *out = pq_self_cache;
    return 0;
}

int pq_proc_alive(int32_t pid, uint64_t start_time, int start_time_bits32)
{
    uint64_t actual;
    int rc;

    if (pid <= 0)
        return 0;
    /* kill(pid, 0) is cheap and settles the common "long gone" case. */
    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 0;
    rc = pq_proc_start_time(pid, &actual);
    if (rc == -ESRCH)
        return 0;
    if (rc < 0)
        return rc;
    if (start_time == 0)
        return 1;
    if (start_time_bits32)
        actual &= 0xffffffffu;
    return actual == start_time ? 1 : 0;
}
