/* new-object: this whole object is new in v1. */
static int extra_base = 70000;

int __attribute__((noinline)) extra_value(int x)
{
    return extra_base + x * 3;
}
