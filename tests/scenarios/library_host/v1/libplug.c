/* libplug.so: a plugin of the host program; v1 calls back into the host's API */
long host_scale(long x);

long plug_run(long x)
{
    return host_scale(x) + 2;
}
