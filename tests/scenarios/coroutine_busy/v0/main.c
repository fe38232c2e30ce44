/* coroutine-busy: a ucontext coroutine runs step(), which switches back to main from inside
 * itself; main never resumes it, so the coroutine stays suspended inside step() on a stack no
 * thread runs on (malloc'ed, or mmap'ed with -DUSE_MMAP). main goes on printing. v1 changes
 * step(), so no safe point may come while the coroutine sits in it. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define STACK_SIZE (64 * 1024)

static ucontext_t main_ctx, co_ctx;
static volatile long rounds;

long __attribute__((noinline)) step(long n)
{
    rounds = n + 1;
    swapcontext(&co_ctx, &main_ctx); /* suspended here, inside step() */
    return rounds * 2;
}

static void coroutine(void)
{
    for (long n = 0;;)
        n = step(n);
}

static void *coroutine_stack(void)
{
#ifdef USE_MMAP
    void *stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
    return stack == MAP_FAILED ? NULL : stack;
#else
    return malloc(STACK_SIZE);
#endif
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    getcontext(&co_ctx);
    co_ctx.uc_stack.ss_sp = coroutine_stack();
    co_ctx.uc_stack.ss_size = STACK_SIZE;
    co_ctx.uc_link = &main_ctx;
    if (co_ctx.uc_stack.ss_sp == NULL)
        return 1;
    makecontext(&co_ctx, coroutine, 0);
    swapcontext(&main_ctx, &co_ctx); /* runs until step() switches back; never resumed */
    printf("coroutine stack at %p\n", co_ctx.uc_stack.ss_sp);
    for (int tick = 1;; tick++) {
        printf("tick %d rounds %ld\n", tick, rounds);
        fflush(stdout);
        usleep(20000);
    }
}
