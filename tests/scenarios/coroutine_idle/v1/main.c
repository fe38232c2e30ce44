/* coroutine-idle: a ucontext coroutine (stack malloc'ed, or mmap'ed with -DUSE_MMAP) is
 * suspended in idle() between calls of step(); main resumes it once per tick and prints what
 * step() returned. v1 changes step(): the coroutine is never inside it when suspended, so the
 * patch applies and its next call runs the new code. step() calls nothing, so no return address
 * into it is ever written on the coroutine's stack. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define STACK_SIZE (64 * 1024)

static ucontext_t main_ctx, co_ctx;
static volatile long result, resumes;

long __attribute__((noinline)) step(long n)
{
    return n + 200000;
}

void __attribute__((noinline)) idle(void)
{
    swapcontext(&co_ctx, &main_ctx); /* suspended here, outside step() */
}

static void coroutine(void)
{
    for (long n = 1;; n++) {
        result = step(n);
        resumes = n;
        idle();
    }
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
    printf("coroutine stack at %p\n", co_ctx.uc_stack.ss_sp);
    for (int tick = 1;; tick++) {
        swapcontext(&main_ctx, &co_ctx); /* one call of step(), then back in idle() */
        printf("tick %d resumes %ld result %ld\n", tick, resumes, result);
        fflush(stdout);
        usleep(20000);
    }
}
