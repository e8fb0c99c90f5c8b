/* test_group.c - consumer groups (pq_group.h): names, a balanced and
 * sticky assignment, commits fenced by epochs, members that leave, die or
 * stop polling, and a lock holder that dies. */
#include "pq_test.h"

#include "../pq_group.h"
#include "../pq_segment.h"

#define PARTS 7u

struct table {
    uint8_t *base;
    pq_group_table_hdr *hdr;
    pq_group_table t;
    pq_event *wake;
};

static int table_make(struct table *tb, uint32_t groups, uint32_t parts)
{
    uint64_t size = 4096 + pq_group_table_size(groups, parts);
    tb->base = pq_test_shared(size);
    if (tb->base == NULL)
        return -1;
    tb->hdr = (pq_group_table_hdr *)(tb->base + 256);
    tb->wake = (pq_event *)(tb->base + 1024);
    if (pq_group_table_init(tb->hdr, tb->base, 4096, groups, parts) != 0)
        return -1;
    return pq_group_table_open(&tb->t, tb->hdr, tb->base, size, parts, tb->wake);
}

/* Owner of each partition; -1 for none. Returns the member count seen. */
static void owners(struct table *tb, uint32_t g, uint64_t *out)
{
    for (uint32_t p = 0; p < tb->t.partitions; p++)
        out[p] = pq_group_owner(&tb->t, g, p);
}

/* Join a group by its index (its current incarnation). */
static int join(struct table *tb, uint32_t g, int64_t timeout_ns, uint64_t *id)
{
    char name[PQ_GROUP_NAME_MAX];
    uint64_t inc;
    if (pq_group_name(&tb->t, g, name) != 0 || pq_group_find(&tb->t, name, 0, &inc) != (int)g)
        return -ENOENT;
    return pq_group_join(&tb->t, g, inc, timeout_ns, id);
}

static int count_owned(struct table *tb, uint32_t g, uint64_t id)
{
    int n = 0;
    for (uint32_t p = 0; p < tb->t.partitions; p++)
        n += pq_group_owner(&tb->t, g, p) == id;
    return n;
}

static int test_names(void)
{
    struct table tb;
    CHECK(table_make(&tb, 2, PARTS) == 0);
    CHECK_EQ(pq_group_find(&tb.t, "a", 0, NULL), -ENOENT);
    int a = pq_group_find(&tb.t, "a", 1, NULL);
    CHECK(a >= 0);
    CHECK_EQ(pq_group_find(&tb.t, "a", 0, NULL), a);
    CHECK_EQ(pq_group_find(&tb.t, "a", 1, NULL), a);
    int b = pq_group_find(&tb.t, "b", 1, NULL);
    CHECK(b >= 0 && b != a);
    CHECK_EQ(pq_group_find(&tb.t, "c", 1, NULL), -ENOSPC);
    CHECK_EQ(pq_group_find(&tb.t, "", 1, NULL), -EINVAL);
    char longname[80];
    memset(longname, 'x', sizeof longname - 1);
    longname[79] = 0;
    CHECK_EQ(pq_group_find(&tb.t, longname, 1, NULL), -EINVAL);
    char name[PQ_GROUP_NAME_MAX];
    CHECK_EQ(pq_group_name(&tb.t, (uint32_t)b, name), 0);
    CHECK(strcmp(name, "b") == 0);
    uint64_t off;
    CHECK_EQ(pq_group_committed(&tb.t, (uint32_t)a, 0, &off, NULL), -ENODATA);
    /* A join of a group deleted (and made anew) since it was found. */
    uint64_t inc_b, inc_c, id;
    CHECK_EQ(pq_group_find(&tb.t, "b", 0, &inc_b), b);
    CHECK_EQ(pq_group_delete(&tb.t, (uint32_t)b), 0);
    CHECK_EQ(pq_group_name(&tb.t, (uint32_t)b, name), -ENOENT);
    CHECK_EQ(pq_group_join(&tb.t, (uint32_t)b, inc_b, 0, &id), -ENOENT);
    CHECK_EQ(pq_group_find(&tb.t, "c", 1, &inc_c), b);
    CHECK(inc_c != inc_b);
    CHECK_EQ(pq_group_join(&tb.t, (uint32_t)b, inc_b, 0, &id), -ENOENT);
    CHECK_EQ(pq_group_join(&tb.t, (uint32_t)b, inc_c, 0, &id), 0);
    return 0;
}

static int test_balanced_sticky_assignment(void)
{
    struct table tb;
    CHECK(table_make(&tb, 1, PARTS) == 0);
    uint32_t g = (uint32_t)pq_group_find(&tb.t, "g", 1, NULL);
    uint64_t ids[5], before[PARTS], after[PARTS];
    for (int m = 0; m < 5; m++) {
        CHECK_EQ(join(&tb, g, 0, &ids[m]), 0);
        CHECK(ids[m] != 0);
        for (int k = 0; k < m; k++)
            CHECK(ids[k] != ids[m]);
        owners(&tb, g, after);
        /* Every partition has exactly one owner among the members, and
         * counts differ by at most one. */
        int mn = 1000, mx = 0;
        for (int k = 0; k <= m; k++) {
            int n = count_owned(&tb, g, ids[k]);
            mn = n < mn ? n : mn;
            mx = n > mx ? n : mx;
        }
        for (uint32_t p = 0; p < PARTS; p++) {
            int found = 0;
            for (int k = 0; k <= m; k++)
                found += after[p] == ids[k];
            CHECK_EQ(found, 1);
        }
        CHECK(mx - mn <= 1);
        if (m > 0) {
            /* Sticky: only what the new member needs moved (to it). */
            int moved = 0;
            for (uint32_t p = 0; p < PARTS; p++)
                if (after[p] != before[p]) {
                    moved++;
                    CHECK_EQ(after[p], ids[m]);
                }
            CHECK_EQ(moved, count_owned(&tb, g, ids[m]));
        }
        memcpy(before, after, sizeof before);
    }
    /* A leaver's partitions go to the others; the others keep theirs. */
    CHECK_EQ(pq_group_leave(&tb.t, g, ids[1]), 0);
    owners(&tb, g, after);
    for (uint32_t p = 0; p < PARTS; p++) {
        CHECK(after[p] != ids[1] && after[p] != 0);
        if (before[p] != ids[1])
            CHECK_EQ(after[p], before[p]);
    }
    CHECK_EQ(pq_group_leave(&tb.t, g, ids[1]), 0); /* twice: fine */
    uint64_t epochs[PARTS], gen;
    CHECK_EQ(pq_group_assignment(&tb.t, g, ids[1], epochs, &gen), -ESTALE);
    CHECK_EQ(pq_group_heartbeat(&tb.t, g, ids[1]), -ESTALE);
    CHECK_EQ(pq_group_heartbeat(&tb.t, g, ids[0]), 0);
    return 0;
}

static int test_commit_fencing(void)
{
    struct table tb;
    CHECK(table_make(&tb, 1, 2) == 0);
    uint32_t g = (uint32_t)pq_group_find(&tb.t, "g", 1, NULL);
    uint64_t a, b, ea[2], eb[2], gen1, gen2;
    CHECK_EQ(join(&tb, g, 0, &a), 0);
    CHECK_EQ(pq_group_assignment(&tb.t, g, a, ea, &gen1), 0);
    CHECK(ea[0] != 0 && ea[1] != 0);
    uint32_t parts[2] = {0, 1};
    uint64_t offs[2] = {10, 20};
    CHECK_EQ(pq_group_commit(&tb.t, g, a, parts, offs, ea, 2, 5), 0);
    CHECK_EQ(join(&tb, g, 0, &b), 0);
    CHECK_EQ(pq_group_assignment(&tb.t, g, b, eb, &gen2), 0);
    CHECK(gen2 > gen1);
    uint32_t moved = eb[0] ? 0 : 1, kept = 1 - moved;
    CHECK(eb[moved] != 0 && eb[kept] == 0);
    CHECK_EQ(eb[moved], gen2);
    /* A's commit of both is fenced and writes nothing ... */
    offs[0] = 11, offs[1] = 21;
    CHECK_EQ(pq_group_commit(&tb.t, g, a, parts, offs, ea, 2, 6), -ESTALE);
    uint64_t o, ms;
    CHECK_EQ(pq_group_committed(&tb.t, g, moved, &o, &ms), 0);
    CHECK_EQ(o, moved == 0 ? 10 : 20);
    CHECK_EQ(ms, 5);
    /* ... its commit of the partition it kept still works (same epoch) ... */
    uint64_t ka[2];
    CHECK_EQ(pq_group_assignment(&tb.t, g, a, ka, NULL), 0);
    CHECK_EQ(ka[kept], ea[kept]);
    CHECK_EQ(ka[moved], 0);
    CHECK_EQ(pq_group_commit(&tb.t, g, a, &parts[kept], &offs[kept], &ea[kept], 1, 7), 0);
    /* ... and B commits the moved one from the committed offset on. */
    CHECK_EQ(pq_group_commit(&tb.t, g, b, &parts[moved], &offs[moved], &eb[moved], 1, 8), 0);
    CHECK_EQ(pq_group_committed(&tb.t, g, moved, &o, NULL), 0);
    CHECK_EQ(o, offs[moved]);
    /* A stale epoch of the right owner is fenced too. */
    uint64_t old = eb[moved] - 1;
    CHECK_EQ(pq_group_commit(&tb.t, g, b, &parts[moved], &offs[moved], &old, 1, 9), -ESTALE);
    CHECK_EQ(pq_group_commit(&tb.t, g, b, &parts[moved], &offs[moved], &ea[kept], 0, 9), 0);
    uint32_t badp = 5;
    CHECK_EQ(pq_group_commit(&tb.t, g, b, &badp, offs, eb, 1, 9), -EINVAL);
    CHECK_EQ(pq_group_set_committed(&tb.t, g, 0, 3, 10), 0);
    CHECK_EQ(pq_group_committed(&tb.t, g, 0, &o, NULL), 0);
    CHECK_EQ(o, 3);
    return 0;
}

static int test_dead_and_silent_members_are_removed(void)
{
    struct table tb;
    CHECK(table_make(&tb, 1, PARTS) == 0);
    uint32_t g = (uint32_t)pq_group_find(&tb.t, "g", 1, NULL);
    uint64_t me;
    CHECK_EQ(join(&tb, g, 0, &me), 0);
    int pipefd[2];
    CHECK(pipe(pipefd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t id;
        CHILD_CHECK(join(&tb, g, 0, &id) == 0);
        CHILD_CHECK(write(pipefd[1], &id, sizeof id) == sizeof id);
        _exit(0); /* dies a member */
    }
    uint64_t child;
    CHECK(read(pipefd[0], &child, sizeof child) == sizeof child);
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    CHECK(count_owned(&tb, g, child) > 0);
    pq_group_member_info info[4];
    int n = pq_group_members(&tb.t, g, info, 4);
    CHECK_EQ(n, 2);
    int dead_seen = 0;
    for (int i = 0; i < n; i++)
        if (info[i].member_id == child)
            dead_seen = info[i].alive == 0 && info[i].pid == pid;
    CHECK(dead_seen);
    CHECK_EQ(pq_group_reap(&tb.t, g), 1);
    CHECK_EQ(count_owned(&tb, g, me), PARTS);
    CHECK_EQ(pq_group_reap(&tb.t, g), 0);
    /* A member that stops polling for longer than its timeout goes too. */
    uint64_t slow;
    CHECK_EQ(join(&tb, g, 5000000, &slow), 0);
    CHECK(count_owned(&tb, g, slow) > 0);
    CHECK_EQ(pq_group_heartbeat(&tb.t, g, slow), 0);
    pq_test_sleep_ms(20);
    CHECK_EQ(pq_group_reap(&tb.t, g), 1);
    CHECK_EQ(count_owned(&tb, g, slow), 0);
    CHECK_EQ(pq_group_heartbeat(&tb.t, g, slow), -ESTALE);
    /* Delete refuses while a live member is there. */
    CHECK_EQ(pq_group_delete(&tb.t, g), -EBUSY);
    CHECK_EQ(pq_group_leave(&tb.t, g, me), 0);
    CHECK_EQ(pq_group_delete(&tb.t, g), 0);
    /* Ids stay unique across a reused slot. */
    uint32_t g2 = (uint32_t)pq_group_find(&tb.t, "again", 1, NULL);
    CHECK_EQ(g2, g);
    uint64_t again;
    CHECK_EQ(join(&tb, g2, 0, &again), 0);
    CHECK(again != me && again != child && again != slow);
    return 0;
}

/* A process dies holding the group lock: the next locker gets the lock,
 * and the group is rebalanced (an assignment half rewritten is redone). */
static int test_lock_holder_dies(void)
{
    struct table tb;
    CHECK(table_make(&tb, 1, PARTS) == 0);
    uint32_t g = (uint32_t)pq_group_find(&tb.t, "g", 1, NULL);
    uint64_t a, b;
    CHECK_EQ(join(&tb, g, 0, &a), 0);
    CHECK_EQ(join(&tb, g, 0, &b), 0);
    uint64_t gen = pq_group_generation(&tb.t, g);
    pq_group *grp = (pq_group *)(tb.t.groups + (uint64_t)g * tb.t.stride);
    pid_t pid = fork();
    if (pid == 0) {
        CHILD_CHECK(pthread_mutex_lock(&grp->lock) == 0);
        /* half a rebalance: two partitions without an owner */
        atomic_store(&grp->parts[0].owner_id, 0);
        atomic_store(&grp->parts[3].owner_id, 0);
        _exit(0);
    }
    CHECK_EQ(pq_test_wait_child(pid, 10000), 0);
    uint64_t ea[PARTS];
    CHECK_EQ(pq_group_assignment(&tb.t, g, a, ea, NULL), 0);
    CHECK(pq_group_generation(&tb.t, g) > gen);
    CHECK_EQ(count_owned(&tb, g, a) + count_owned(&tb, g, b), PARTS);
    int d = count_owned(&tb, g, a) - count_owned(&tb, g, b);
    CHECK(d >= -1 && d <= 1);
    return 0;
}

static int test_table_open_validates(void)
{
    struct table tb;
    CHECK(table_make(&tb, 2, PARTS) == 0);
    pq_group_table t;
    CHECK_EQ(pq_group_table_open(&t, tb.hdr, tb.base, 4096, PARTS, NULL), PQ_ERR_TRUNCATED);
    CHECK_EQ(pq_group_table_open(&t, tb.hdr, tb.base, 1 << 20, PARTS + 1, NULL), PQ_ERR_CORRUPT);
    tb.hdr->stride += 64;
    CHECK_EQ(pq_group_table_open(&t, tb.hdr, tb.base, 1 << 20, PARTS, NULL), PQ_ERR_CORRUPT);
    CHECK_EQ(pq_group_table_size(0, 1), 0);
    CHECK_EQ(pq_group_table_size(1, 0), 0);
    return 0;
}

int main(void)
{
    printf("test_group\n");
    RUN(test_names);
    RUN(test_balanced_sticky_assignment);
    RUN(test_commit_fencing);
    RUN(test_dead_and_silent_members_are_removed);
    RUN(test_lock_holder_dies);
    RUN(test_table_open_validates);
    return pq_test_result();
}
