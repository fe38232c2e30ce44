/* declared-stack: a coroutine switched by hand-written assembly (no ucontext, as boost.context
 * or QEMU do), suspended inside step() on a malloc'ed stack that no thread runs on. The program
 * declares its suspended stacks to katana through katana_stacks/katana_nstacks. With
 * -DDECLARE=0 it does not, and katana cannot know the stack exists. v1 changes step(). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef DECLARE
#define DECLARE 1
#endif

struct katana_stack { void *sp, *top; };
struct katana_stack declared[1];
struct katana_stack *katana_stacks = declared;
unsigned long katana_nstacks;

/* co_switch(&save, next): push the callee-saved registers, save rsp, load next, pop, return. */
void co_switch(void **save, void *next);
__asm__(".text\n.globl co_switch\n.type co_switch,@function\nco_switch:\n"
        "push %rbp\npush %rbx\npush %r12\npush %r13\npush %r14\npush %r15\n"
        "mov %rsp, (%rdi)\nmov %rsi, %rsp\n"
        "pop %r15\npop %r14\npop %r13\npop %r12\npop %rbx\npop %rbp\nret\n"
        ".size co_switch,.-co_switch\n");

static void *main_sp, *co_sp;
static volatile long rounds;

long __attribute__((noinline)) step(long n)
{
    rounds = n + 1;
    co_switch(&co_sp, main_sp); /* suspended here, inside step() */
    return rounds * 2;
}

static void __attribute__((noinline)) coroutine(void)
{
    for (long n = 0;;)
        n = step(n);
}

int main(void)
{
    enum { SIZE = 64 * 1024 };
    char *stack = malloc(SIZE);
    void **sp = (void **)(stack + SIZE);

    setvbuf(stdout, NULL, _IOLBF, 0);
    *--sp = 0;                  /* alignment: rsp % 16 == 8 at coroutine's first instruction */
    *--sp = (void *)coroutine;  /* co_switch's ret goes here */
    for (int i = 0; i < 6; i++)
        *--sp = 0;              /* r15 .. rbp */
    co_sp = sp;
    co_switch(&main_sp, co_sp); /* runs until step() switches back; never resumed */
    if (DECLARE) {
        declared[0].sp = co_sp;
        declared[0].top = stack + SIZE;
        katana_nstacks = 1;
    }
    for (int tick = 1;; tick++) {
        printf("tick %d rounds %ld\n", tick, rounds);
        usleep(20000);
    }
}
