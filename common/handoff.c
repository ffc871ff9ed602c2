/* handoff.c - the hand-off between threads: see sl_common.h. */
#include "sl_common.h"

#include <sched.h>
#include <string.h>

/* The item's next pointer is the caller's typed field: read and written as
 * bytes, so that no lvalue of another pointer type touches it. */
static void *next_of(const sl_handoff_t *h, void *item)
{
    void *next;
    memcpy(&next, (char *)item + h->next_offset, sizeof(next));
    return next;
}

static void set_next(const sl_handoff_t *h, void *item, void *next)
{
    memcpy((char *)item + h->next_offset, &next, sizeof(next));
}

static void on_async(uv_async_t *a)
{
    sl_handoff_t *h = a->data;
    h->on_wake(h);
}

static void on_closed(uv_handle_t *handle)
{
    sl_handoff_t *h = handle->data;
    if (h->closed_cb) h->closed_cb(h);
}

int sl_handoff_init(sl_handoff_t *h, size_t next_offset, uv_loop_t *loop, void (*on_wake)(sl_handoff_t *h))
{
    void *data = h->data;
    memset(h, 0, sizeof(*h));
    h->data = data;
    h->next_offset = next_offset;
    h->on_wake = on_wake;
    int rc = uv_mutex_init(&h->mu);
    if (rc) return rc;
    if (loop) {
        if ((rc = uv_async_init(loop, &h->async, on_async))) {
            uv_mutex_destroy(&h->mu);
            return rc;
        }
        h->async.data = h;
        h->async_mode = 1;
    } else if ((rc = uv_cond_init(&h->cv))) {
        uv_mutex_destroy(&h->mu);
        return rc;
    }
    h->inited = 1;
    return 0;
}

/* Under mu, when the queue just went from empty to non-empty or on a wake:
 * 1 when the consumer must be woken (after unlocking: see wake()). */
static int must_wake_locked(sl_handoff_t *h)
{
    if (!h->async_mode && !h->waiting) return 0; /* it looks at the queue before it waits */
    if (h->async_mode) h->sending++; /* close waits for this send */
    h->wakeups++;
    return 1;
}

/* The wake itself, once mu is released: a consumer woken on the same core
 * would otherwise run at once and block on the lock its waker still holds. */
static void wake(sl_handoff_t *h)
{
    if (h->async_mode) {
        uv_async_send(&h->async);
        uv_mutex_lock(&h->mu);
        h->sending--;
        uv_mutex_unlock(&h->mu);
    } else {
        uv_cond_signal(&h->cv);
    }
}

int sl_handoff_push_list(sl_handoff_t *h, void *first)
{
    if (first == NULL) return 0;
    void *last = first;
    for (void *n; (n = next_of(h, last)) != NULL;) last = n;
    uv_mutex_lock(&h->mu);
    if (h->closed) {
        uv_mutex_unlock(&h->mu);
        return SL_ESHUTDOWN;
    }
    int was_empty = h->head == NULL;
    if (was_empty) h->head = first;
    else set_next(h, h->tail, first);
    h->tail = last;
    int w = was_empty && must_wake_locked(h);
    uv_mutex_unlock(&h->mu);
    if (w) wake(h);
    return 0;
}

int sl_handoff_push(sl_handoff_t *h, void *item)
{
    set_next(h, item, NULL);
    return sl_handoff_push_list(h, item);
}

/* The loop thread: this iteration's pushes go over. Refused (the queue is
 * closed: a misuse), they stay in b for sl_handoff_batch_close() to give
 * back. */
static int batch_flush(sl_handoff_batch_t *b)
{
    void *list = b->head;
    if (list == NULL) return 0;
    int rc = sl_handoff_push_list(b->to, list);
    if (rc == 0) b->head = b->tail = NULL;
    return rc;
}

static void on_batch_prepare(uv_prepare_t *p)
{
    batch_flush(p->data);
}

static void on_batch_check(uv_check_t *c)
{
    batch_flush(c->data);
}

static void batch_handle_closed(uv_handle_t *handle)
{
    sl_handoff_batch_t *b = handle->data;
    if (--b->open_handles == 0 && b->closed_cb) b->closed_cb(b);
}

int sl_handoff_batch_start(sl_handoff_batch_t *b, sl_handoff_t *to, uv_loop_t *loop)
{
    if (to->async_mode || b->started) return UV_EINVAL;
    void *data = b->data;
    memset(b, 0, sizeof(*b));
    b->data = data;
    b->to = to;
    int rc = uv_prepare_init(loop, &b->prepare);
    if (rc) return rc;
    if ((rc = uv_check_init(loop, &b->check))) {
        uv_close((uv_handle_t *)&b->prepare, NULL);
        return rc;
    }
    b->prepare.data = b->check.data = b;
    uv_prepare_start(&b->prepare, on_batch_prepare);
    uv_check_start(&b->check, on_batch_check);
    uv_unref((uv_handle_t *)&b->prepare);
    uv_unref((uv_handle_t *)&b->check);
    b->started = 1;
    b->open_handles = 2;
    return 0;
}

int sl_handoff_push_batched(sl_handoff_batch_t *b, void *item)
{
    if (b->closed) return SL_ESHUTDOWN;
    sl_handoff_t *h = b->to;
    set_next(h, item, NULL);
    if (b->tail) set_next(h, b->tail, item);
    else b->head = item;
    b->tail = item;
    return 0;
}

int sl_handoff_batch_close(sl_handoff_batch_t *b, void **left, void (*closed_cb)(sl_handoff_batch_t *b))
{
    if (left) *left = NULL;
    if (!b->started || b->closed) return 0;
    b->closed_cb = closed_cb;
    int rc = batch_flush(b);
    if (rc && left) *left = b->head;
    b->head = b->tail = NULL;
    b->closed = 1;
    uv_close((uv_handle_t *)&b->prepare, batch_handle_closed);
    uv_close((uv_handle_t *)&b->check, batch_handle_closed);
    return rc;
}

void *sl_handoff_take_all(sl_handoff_t *h)
{
    uv_mutex_lock(&h->mu);
    void *list = h->head;
    h->head = h->tail = NULL;
    uv_mutex_unlock(&h->mu);
    return list;
}

void sl_handoff_wake(sl_handoff_t *h)
{
    uv_mutex_lock(&h->mu);
    int w = 0;
    if (!h->closed) {
        h->woken = 1;
        w = must_wake_locked(h);
    }
    uv_mutex_unlock(&h->mu);
    if (w) wake(h);
}

int sl_handoff_wait(sl_handoff_t *h, uint64_t timeout_ns)
{
    int rc = 0;
    uint64_t deadline = timeout_ns == SL_HANDOFF_FOREVER ? 0 : uv_hrtime() + timeout_ns;
    uv_mutex_lock(&h->mu);
    while (h->head == NULL && !h->woken && !h->closed) {
        h->waiting = 1;
        if (timeout_ns == SL_HANDOFF_FOREVER) {
            uv_cond_wait(&h->cv, &h->mu);
        } else {
            uint64_t now = uv_hrtime();
            if (now >= deadline || uv_cond_timedwait(&h->cv, &h->mu, deadline - now) == UV_ETIMEDOUT) rc = UV_ETIMEDOUT;
        }
        h->waiting = 0;
        if (rc) break;
    }
    if (h->head || h->woken) rc = 0; /* came in with the timeout */
    if (h->closed) rc = SL_ESHUTDOWN;
    h->woken = 0;
    uv_mutex_unlock(&h->mu);
    return rc;
}

void sl_handoff_close(sl_handoff_t *h, void (*closed_cb)(sl_handoff_t *h))
{
    uv_mutex_lock(&h->mu);
    int was = h->closed;
    h->closed = 1;
    /* no send starts from now on; one a producer decided on before may be
     * under way, between its unlock and uv_async_send(): a few instructions */
    while (h->async_mode && h->sending > 0) {
        uv_mutex_unlock(&h->mu);
        sched_yield();
        uv_mutex_lock(&h->mu);
    }
    uv_mutex_unlock(&h->mu);
    if (was) return;
    if (!h->async_mode) {
        uv_cond_signal(&h->cv);
        return;
    }
    h->closed_cb = closed_cb;
    uv_close((uv_handle_t *)&h->async, on_closed);
}

void sl_handoff_destroy(sl_handoff_t *h)
{
    if (!h->inited) return;
    h->inited = 0;
    uv_mutex_destroy(&h->mu);
    if (!h->async_mode) uv_cond_destroy(&h->cv);
}

uint64_t sl_handoff_wakeups(sl_handoff_t *h)
{
    uv_mutex_lock(&h->mu);
    uint64_t n = h->wakeups;
    uv_mutex_unlock(&h->mu);
    return n;
}
