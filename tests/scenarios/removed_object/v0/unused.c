/* removed-object: linked into v0, called by nothing, gone in v1. */
int __attribute__((noinline)) unused_helper(int x)
{
    return x * 31 + 7;
}
