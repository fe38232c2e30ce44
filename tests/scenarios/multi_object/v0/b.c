#include "parts.h"

int __attribute__((noinline)) part_b(int x)
{
    return x * 3 + (x >> 2) + 2;
}
