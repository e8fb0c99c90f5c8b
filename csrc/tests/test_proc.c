/*
 * test_proc.c - process identity (pid + start time) and liveness: a live
 * process, one that exited and was reaped, a zombie, a pid with another
 * start time, and the cached identity refreshed in a forked child.
 */
#include "pq_test.h"

#include <sys/prctl.h>

#include "../pq_proc.h"

static int test_self_stable(void)
{
    pq_proc_id a, b;
    uint64_t st;
    CHECK_EQ(pq_proc_self(&a), 0);
    CHECK_EQ(pq_proc_self(&b), 0);
    CHECK_EQ(a.pid, getpid());
    CHECK(a.start_time > 0);
    CHECK(a.pid == b.pid && a.start_time == b.start_time);
    CHECK_EQ(pq_proc_start_time(getpid(), &st), 0);
    CHECK(st == a.start_time);

    CHECK_EQ(pq_proc_alive(a.pid, a.start_time, 0), 1);
    CHECK_EQ(pq_proc_alive(a.pid, a.start_time & 0xffffffffu, 1), 1);
    CHECK_EQ(pq_proc_alive(a.pid, 0, 0), 1); /* any start time */
    CHECK_EQ(pq_proc_alive(getppid(), 0, 0), 1);

    /* The owner word kept in record headers round-trips. */
    int32_t pid;
    uint64_t start32;
    pq_proc_unpack(pq_proc_pack(&a), &pid, &start32);
    CHECK_EQ(pid, a.pid);
    CHECK(start32 == (a.start_time & 0xffffffffu));
    CHECK_EQ(pq_proc_alive(pid, start32, 1), 1);
    return 0;
}

static int test_bad_pids(void)
{
    uint64_t st;
    CHECK_EQ(pq_proc_alive(0, 0, 0), 0);
    CHECK_EQ(pq_proc_alive(-1, 0, 0), 0);
    CHECK_EQ(pq_proc_alive(INT32_MIN, 0, 0), 0);
    CHECK_EQ(pq_proc_start_time(0, &st), -EINVAL);
    CHECK_EQ(pq_proc_start_time(-5, &st), -EINVAL);

    /* pid_max is never a pid. */
    FILE *f = fopen("/proc/sys/kernel/pid_max", "r");
    long pid_max = 0;
    if (f != NULL) {
        CHECK(fscanf(f, "%ld", &pid_max) == 1);
        fclose(f);
    }
    if (pid_max > 0 && pid_max <= INT32_MAX) {
        CHECK_EQ(pq_proc_alive((int32_t)pid_max, 0, 0), 0);
        CHECK_EQ(pq_proc_start_time((int32_t)pid_max, &st), -ESRCH);
    }
    return 0;
}

/* A child that waits on a pipe so it stays alive until told. */
static pid_t spawn_sleeper(int *wfd)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        char c;
        close(fds[1]);
        while (read(fds[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(fds[0]);
    *wfd = fds[1];
    return pid;
}

static int test_wrong_start_time(void)
{
    int wfd;
    uint64_t st;
    pid_t pid = spawn_sleeper(&wfd);
    CHECK(pid > 0);
    CHECK_EQ(pq_proc_start_time(pid, &st), 0);
    CHECK_EQ(pq_proc_alive(pid, st, 0), 1);
    CHECK_EQ(pq_proc_alive(pid, st + 1, 0), 0);
    CHECK_EQ(pq_proc_alive(pid, st - 1 ? st - 1 : 2, 0), 0);
    /* 32-bit comparison: the high bits do not matter, the low ones do. */
    CHECK_EQ(pq_proc_alive(pid, (st & 0xffffffffu), 1), 1);
    CHECK_EQ(pq_proc_alive(pid, ((st + 1) & 0xffffffffu), 1), 0);
    CHECK_EQ(pq_proc_alive(pid, st | (1ull << 40), 0), 0);
    close(wfd);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    return 0;
}

static int test_exited_and_reaped(void)
{
    uint64_t st;
    int wfd;
    pid_t pid = spawn_sleeper(&wfd);
    CHECK(pid > 0);
    CHECK_EQ(pq_proc_start_time(pid, &st), 0);
    close(wfd);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    /* Reaped: the pid is free (or, rarely, reused: then the start time
     * tells them apart). */
    CHECK_EQ(pq_proc_alive(pid, st, 0), 0);
    CHECK_EQ(pq_proc_alive(pid, st & 0xffffffffu, 1), 0);
    return 0;
}

static int test_zombie(void)
{
    uint64_t st;
    int wfd;
    pid_t pid = spawn_sleeper(&wfd);
    CHECK(pid > 0);
    CHECK_EQ(pq_proc_start_time(pid, &st), 0);
    close(wfd);
    /* Wait for it to exit without reaping it: a zombie. */
    siginfo_t info;
    memset(&info, 0, sizeof info);
    CHECK(waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) == 0);
    CHECK_EQ(info.si_pid, pid);
    CHECK_EQ(kill(pid, 0), 0); /* the pid still exists */
    CHECK_EQ(pq_proc_alive(pid, st, 0), 0);
    CHECK_EQ(pq_proc_alive(pid, 0, 0), 0);
    CHECK_EQ(pq_proc_alive(pid, st & 0xffffffffu, 1), 0);
    CHECK_EQ(pq_proc_start_time(pid, &st), -ESRCH);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    return 0;
}

/* After fork the child's identity is the child's, though the parent
 * cached its own before forking (the atfork handler). */
static int test_fork_refresh(void)
{
    pq_proc_id parent, *child_id = pq_test_shared(sizeof *child_id);
    CHECK(child_id != NULL);
    CHECK_EQ(pq_proc_self(&parent), 0); /* cached now */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        pq_proc_id me;
        uint64_t st;
        CHILD_CHECK(pq_proc_self(&me) == 0);
        CHILD_CHECK(me.pid == getpid());
        CHILD_CHECK(pq_proc_start_time(getpid(), &st) == 0);
        CHILD_CHECK(me.start_time == st);
        *child_id = me;
        /* And a grandchild, forked from a process that cached too. */
        pid_t g = fork();
        if (g == 0) {
            pq_proc_id gme;
            CHILD_CHECK(pq_proc_self(&gme) == 0);
            CHILD_CHECK(gme.pid == getpid());
            _exit(0);
        }
        CHILD_CHECK(g > 0 && pq_test_wait_child(g, 5000) == 0);
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    CHECK_EQ(child_id->pid, pid);
    CHECK(child_id->start_time >= parent.start_time);
    /* The parent's cache is untouched. */
    pq_proc_id again;
    CHECK_EQ(pq_proc_self(&again), 0);
    CHECK(again.pid == parent.pid && again.start_time == parent.start_time);
    munmap(child_id, sizeof *child_id);
    return 0;
}

/* /proc/PID/stat's command name may hold spaces and parentheses. */
static int test_odd_command_name(void)
{
    uint64_t *st_child = pq_test_shared(sizeof *st_child * 2);
    int fds[2];
    CHECK(st_child != NULL);
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char c;
        close(fds[1]);
        CHILD_CHECK(prctl(PR_SET_NAME, "a) (b c) 9 9", 0, 0, 0) == 0);
        pq_proc_id me;
        CHILD_CHECK(pq_proc_self(&me) == 0);
        st_child[0] = me.start_time;
        atomic_store((_Atomic uint64_t *)&st_child[1], 1);
        while (read(fds[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(fds[0]);
    int64_t t0 = pq_test_now_ns();
    while (atomic_load((_Atomic uint64_t *)&st_child[1]) == 0 && pq_test_now_ns() - t0 < 5000000000LL)
        pq_test_sleep_ms(1);
    uint64_t st;
    CHECK_EQ(pq_proc_start_time(pid, &st), 0);
    CHECK(st == st_child[0]);
    CHECK_EQ(pq_proc_alive(pid, st, 0), 1);
    close(fds[1]);
    CHECK_EQ(pq_test_wait_child(pid, 5000), 0);
    munmap(st_child, sizeof *st_child * 2);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_proc\n");
    RUN(test_self_stable);
    RUN(test_bad_pids);
    RUN(test_wrong_start_time);
    RUN(test_exited_and_reaped);
    RUN(test_zombie);
    RUN(test_fork_refresh);
    RUN(test_odd_command_name);
    return pq_test_result();
}
