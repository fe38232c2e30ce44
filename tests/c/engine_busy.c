/* Target of the safe-point tests: one thread forever inside busy_loop() (called from outer()),
 * one interrupted inside interrupted() by a signal whose handler never returns. */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

volatile unsigned long iterations, interrupted_iterations;
volatile int stop_flag;

__attribute__((noipa)) void busy_loop(void)
{
    while (!stop_flag)
        iterations++;
}

__attribute__((noipa)) void outer(void)
{
    busy_loop();
    printf("busy_loop returned\n");
}

__attribute__((noipa)) void interrupted(void)
{
    while (!stop_flag)
        interrupted_iterations++;
}

__attribute__((noipa)) int unused_fn(int x) { return x * 3 + 1; }

static void handler(int sig)
{
    (void)sig;
    write(1, "in handler\n", 11);
    for (;;)
        pause(); /* SIGUSR1 is blocked while its handler runs: sleeps forever */
}

static void *busy_thread(void *arg)
{
    (void)arg;
    outer();
    return NULL;
}

static void *signal_thread(void *arg)
{
    (void)arg;
    interrupted();
    return NULL;
}

int main(void)
{
    pthread_t busy, sig;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR1, handler);
    pthread_create(&busy, NULL, busy_thread, NULL);
    pthread_setname_np(busy, "busy");
    pthread_create(&sig, NULL, signal_thread, NULL);
    pthread_setname_np(sig, "sig");
    while (interrupted_iterations == 0 || iterations == 0)
        ; /* make sure the signal lands inside interrupted(), and busy_loop() runs */
    pthread_kill(sig, SIGUSR1);
    printf("ready %d\n", unused_fn(1));
    for (;;)
        poll(NULL, 0, 100);
}
