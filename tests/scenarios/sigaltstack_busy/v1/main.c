/* sigaltstack-busy: a worker thread spins inside work() until a signal comes; the handler runs
 * on the thread's alternate signal stack and never returns (it waits in pause()). The thread's
 * RSP is on the alternate stack, while work(), interrupted, is on its ordinary stack: only a
 * check that follows the signal frame back sees that work() is in use. v1 changes work(). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t signalled;
static volatile long spins;

void __attribute__((noinline)) work(void)
{
    while (!signalled)
        spins++;
    for (;;)
        spins += 3;
}

static void on_signal(int sig)
{
    (void)sig;
    signalled = 1;
    for (;;)
        pause();
}

static void *worker(void *arg)
{
    stack_t alt = { .ss_sp = malloc(1 << 16), .ss_size = 1 << 16 };
    struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_ONSTACK };

    (void)arg;
    sigaltstack(&alt, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    work();
    return NULL;
}

int main(void)
{
    pthread_t tid;

    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_create(&tid, NULL, worker, NULL);
    for (int tick = 1;; tick++) {
        if (tick == 3)
            pthread_kill(tid, SIGUSR1);
        printf("tick %d signalled %d\n", tick, (int)signalled);
        usleep(20000);
    }
}
