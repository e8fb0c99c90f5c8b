/* test_topic_subs.c - the subscriber table read for monitoring
 * (pq_topic_get_sub_stats, pq_topic_subs.c). */
#include "pq_test.h"

#include "../pq_proc.h"
#include "../pq_topic.h"

#define CAP 4096u

static int publish_one(pq_topic *t)
{
    uint32_t len = 100; /* a 128-byte record: 32 fit */
    uint64_t pos, needed;
    int rc = pq_topic_claim(t, &len, 1, &pos, &needed);
    if (rc != 0)
        return rc;
    memset(pq_topic_payload(t, pos), 0, len);
    pq_topic_commit(t, pos, 1);
    return 0;
}

static int test_sub_stats(void)
{
    pq_topic t;
    size_t size = pq_topic_segment_size(CAP);
    void *base = pq_test_shared(size);
    CHECK(base != NULL);
    CHECK_EQ(pq_topic_create(base, size, CAP, PQ_TOPIC_LOSSY, NULL, 0), 0);
    CHECK_EQ(pq_topic_open(&t, base, size), 0);
    pq_topic_sub_stats st;
    CHECK_EQ(pq_topic_get_sub_stats(&t, -1, &st), -EINVAL);
    CHECK_EQ(pq_topic_get_sub_stats(&t, PQ_TOPIC_SUBS, &st), -EINVAL);
    for (int i = 0; i < PQ_TOPIC_SUBS; i++)
        CHECK_EQ(pq_topic_get_sub_stats(&t, i, &st), -ENOENT);
    pq_topic_sub s;
    CHECK_EQ(pq_topic_subscribe(&t, &s, PQ_TOPIC_START_LATEST), 0);
    CHECK_EQ(pq_topic_get_sub_stats(&t, s.slot, &st), 0);
    CHECK_EQ(st.pid, (int32_t)getpid());
    CHECK_EQ(st.lag, 0);
    CHECK_EQ(st.lost, 0);
    /* 40 records into a 32-record ring: lapped by 8 once it reads. */
    for (int i = 0; i < 40; i++)
        CHECK_EQ(publish_one(&t), 0);
    CHECK_EQ(pq_topic_get_sub_stats(&t, s.slot, &st), 0);
    CHECK_EQ(st.lag, 40);
    CHECK_EQ(st.lag, pq_topic_lag(&t, &s));
    pq_topic_record rec;
    pq_topic_batch b;
    CHECK_EQ(pq_topic_peek(&t, &s, &rec, 1, &b), 1);
    CHECK_EQ(pq_topic_advance(&t, &s, &b), 0);
    CHECK_EQ(pq_topic_get_sub_stats(&t, s.slot, &st), 0);
    CHECK_EQ(st.lost, 8);
    CHECK_EQ(st.read, 9);
    CHECK_EQ(st.lag, 31);
    int slot = s.slot;
    CHECK_EQ(pq_topic_unsubscribe(&t, &s), 0);
    CHECK_EQ(pq_topic_get_sub_stats(&t, slot, &st), -ENOENT);
    return 0;
}

int main(void)
{
    printf("test_topic_subs\n");
    RUN(test_sub_stats);
    return pq_test_result();
}
