/* v2 of the library: value = 4 * x. Its state is static: what a patch must keep. */
#include "kv.h"

#ifdef KV_SALT
/* the tests build each run's library apart from another run's on the same host (apply all) */
const long kv_salt = KV_SALT;
#endif

static long calls;
/* initial-exec: the library's TLS block sits at a fixed offset from the thread pointer */
#ifndef KV_TLS_MODEL
#define KV_TLS_MODEL "initial-exec"
#endif
static __thread long thread_calls __attribute__((tls_model(KV_TLS_MODEL)));

struct kv_stats { long hits; long total; };
/* a global of the library: its own code reaches it through its GOT (it could be interposed) */
struct kv_stats kv_stats;

/* hidden: local in the linked library, found by the patch in its .symtab */
__attribute__((noipa, visibility("hidden"))) long kv_scale(long x, long k)
{
    return x * k;
}

long kv_compute(long x)
{
    calls++;
    thread_calls++;
    kv_stats.hits++;
    kv_stats.total += x;
    return kv_scale(x, 4);
}

long kv_calls(void) { return calls; }
long kv_thread_calls(void) { return thread_calls; }
long kv_total(void) { return kv_stats.total; }
long kv_hits(void) { return kv_stats.hits; }
long kv_misses(void) { return -1; }
