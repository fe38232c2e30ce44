/* Target of the fault-injection tests: two threads call compute() nonstop, a third sleeps in
 * nanosleep, and the main thread prints "tick N result R" every 10 ms (R = compute(N), so the
 * line says which version runs) and answers "ping" lines on stdin with "pong". With "busy" as
 * argument, one more thread never leaves compute(): no safe point ever comes.
 * The workers spend most of their time outside compute(), so a safe point comes soon.
 * COMPUTE_BODY is replaced by the test: v0 returns 2x, v1 3x. */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile long sink;

__attribute__((noinline)) long compute(long x, long spin)
{
    for (volatile long i = 0; i < spin; i++)
        sink += i;
    return COMPUTE_BODY;
}

static void *worker(void *arg)
{
    long spin = (long)arg;
    if (spin < 0) /* never leaves compute() */
        compute(1, -spin);
    for (long i = 0;; i++) {
        sink += compute(i, 0);
        for (volatile long j = 0; j < spin; j++)
            ;
    }
    return NULL;
}

static void *sleeper(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t tid;
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_create(&tid, NULL, worker, (void *)100L);
    pthread_create(&tid, NULL, worker, (void *)1000L);
    pthread_create(&tid, NULL, sleeper, NULL);
    if (argc > 1 && strcmp(argv[1], "busy") == 0)
        pthread_create(&tid, NULL, worker, (void *)-(1L << 62));
    printf("ready\n");
    for (long tick = 1;; tick++) {
        struct pollfd p = {0, POLLIN, 0};
        if (poll(&p, 1, 10) > 0) {
            char buf[64];
            ssize_t n = read(0, buf, sizeof buf);
            if (n <= 0)
                return 0;
            printf("pong\n");
        }
        printf("tick %ld result %ld\n", tick, compute(tick, 0));
    }
}
