/* pointer-to-struct: head points into a ring of three heap nodes (a cycle); last points to one of
 * them too. struct node grows in v1. Invariants: node k has visits == (tick - k) / 3 + 1, head is
 * node tick % 3 + 1, last is the node visited last. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct node {
    int id;
    int weight;
    int visits;
    struct node *next;
};

struct node *head;
struct node *last;

void __attribute__((noinline)) build(void)
{
    struct node *nodes[3];

    for (int i = 0; i < 3; i++) {
        nodes[i] = calloc(1, sizeof(struct node));
        nodes[i]->id = i + 1;
    }
    for (int i = 0; i < 3; i++)
        nodes[i]->next = nodes[(i + 1) % 3];
    head = nodes[0];
}

void __attribute__((noinline)) step(void)
{
    head->visits++;
    head->weight = head->id * 10;
    last = head;
    head = head->next;
}

void __attribute__((noinline)) report(int tick)
{
    struct node *n = head;

    printf("tick %d head %d last %d", tick, head->id, last->id);
    for (int i = 0; i < 3; i++, n = n->next)
        printf(" %d:%d:%d", n->id, n->visits, n->weight);
    printf(" v1\n");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    build();
    for (int tick = 1;; tick++) {
        step();
        report(tick);
        usleep(20000);
    }
}
