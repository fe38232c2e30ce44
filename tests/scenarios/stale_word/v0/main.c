/* stale-word: a worker thread calls work() (which calls mix()), then blocks in read() inside
 * wait_input(), whose uninitialised 1 KiB buffer lies where work()'s frame was: the return address
 * into work() pushed by its call of mix() stays there, a word that looks like a live frame of work
 * although the thread is not inside it. main feeds one byte per tick (read() writes only buf[0],
 * the far end of the buffer) and prints the worker's last result. v1 changes work(). */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static int pipefd[2];
static volatile int last;
static volatile long calls;
static volatile char got;

int __attribute__((noinline)) mix(int x)
{
    return (x * 7) % 100;
}

int __attribute__((noinline)) work(int x)
{
    return mix(x) + 100000;
}

static void __attribute__((noinline)) wait_input(void)
{
    char buf[1024]; /* never initialised: it keeps what earlier calls at this depth left */

    if (read(pipefd[0], buf, sizeof buf) > 0)
        got = buf[0];
}

static void *worker(void *arg)
{
    (void)arg;
    for (long n = 1;; n++) {
        last = work((int)n);
        calls = n;
        wait_input();
    }
    return NULL;
}

int main(void)
{
    pthread_t tid;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pipe(pipefd) != 0)
        return 1;
    pthread_create(&tid, NULL, worker, NULL);
    for (int tick = 1;; tick++) {
        if (write(pipefd[1], "x", 1) != 1)
            return 1;
        usleep(20000);
        printf("tick %d result %d calls %ld\n", tick, last, calls);
        fflush(stdout);
    }
}
