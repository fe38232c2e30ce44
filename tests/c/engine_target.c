/* Target of the engine's live tests: 8 spinning threads, a thread blocked in read() on stdin,
 * one in nanosleep(), and a main thread in poll() that prints whenever a global changes. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile int watched = 7;
volatile int base = 100;
char buffer[64] = "0123456789abcdefghijklmnopqrstuvwxyz";
volatile unsigned long spins[8];
static volatile sig_atomic_t got_signal, got_code;

/* noipa: no caller may depend on what these do (no inlining, no IPA constant propagation). */
__attribute__((noipa)) int value(void) { return base; }
__attribute__((noipa)) int spare(int x) { return x * 3 + 1; }

__attribute__((noipa)) unsigned long work(unsigned long x)
{
    for (int i = 0; i < 1000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

static void *spinner(void *arg)
{
    long i = (long)arg;
    unsigned long x = (unsigned long)i;
    for (;;) {
        x = work(x);
        spins[i] += (x & 0xff) == 0 ? (unsigned long)value() : 1;
    }
    return NULL;
}

static void *reader(void *arg)
{
    char buf[128];
    (void)arg;
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);
        if (n < 0) {
            printf("read error %d\n", errno);
            continue;
        }
        if (n == 0)
            return NULL;
        buf[n] = 0;
        buf[strcspn(buf, "\n")] = 0;
        printf("read %s\n", buf);
    }
}

static void *sleeper(void *arg)
{
    unsigned long ticks = 0;
    (void)arg;
    for (;;) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        if (nanosleep(&ts, NULL) != 0)
            printf("nanosleep error %d\n", errno);
        else
            printf("tick %lu\n", ++ticks);
    }
    return NULL;
}

static void on_signal(int sig, siginfo_t *info, void *ctx)
{
    (void)ctx;
    got_code = info->si_code;
    got_signal = sig;
}

static void start(void *(*fn)(void *), void *arg, const char *name)
{
    pthread_t t;
    pthread_create(&t, NULL, fn, arg);
    pthread_setname_np(t, name);
}

int main(void)
{
    char name[16], last_buffer[64];
    struct sigaction sa = {0};
    setvbuf(stdout, NULL, _IOLBF, 0);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    for (long i = 0; i < 8; i++) {
        snprintf(name, sizeof name, "spin%ld", i);
        start(spinner, (void *)i, name);
    }
    start(reader, NULL, "reader");
    start(sleeper, NULL, "sleeper");
    int last_watched = watched, last_value = value();
    memcpy(last_buffer, buffer, sizeof buffer);
    printf("ready %d %d\n", last_watched, last_value);
    for (;;) {
        poll(NULL, 0, 20);
        if (watched != last_watched)
            printf("watched %d\n", last_watched = watched);
        int v = value();
        if (v != last_value)
            printf("value %d\n", last_value = v);
        if (memcmp(buffer, last_buffer, sizeof buffer) != 0) {
            memcpy(last_buffer, buffer, sizeof buffer);
            printf("buffer %.63s\n", last_buffer);
        }
        if (got_signal) {
            printf("signal %d code %d\n", (int)got_signal, (int)got_code);
            got_signal = 0;
        }
    }
}
