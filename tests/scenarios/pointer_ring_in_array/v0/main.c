/* pointer-ring: the nodes of a global array point at each other (&pool[i]); struct node grows. */
#include <stdio.h>
#include <unistd.h>
struct node { int id; int visits; struct node *next; };
struct node pool[3];
struct node *head;
void __attribute__((noinline)) build(void)
{
    for (int i = 0; i < 3; i++) { pool[i].id = i + 1; pool[i].next = &pool[(i + 1) % 3]; }
    head = &pool[0];
}
void __attribute__((noinline)) step(void) { head->visits++; head = head->next; }
void __attribute__((noinline)) report(int tick)
{
    printf("tick %d", tick);
    for (int i = 0; i < 3; i++) printf(" %d:%d", pool[i].id, pool[i].visits);
    printf(" V0\n");
}
int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    build();
    for (int tick = 1;; tick++) { step(); report(tick); usleep(20000); }
}
