/* net.h - the listening socket and the client connections. */
#ifndef KVD_NET_H
#define KVD_NET_H

/* Listen on 127.0.0.1:PORT (0 picks a free port).  Store the port actually bound in *BOUND and
 * return the listening socket, or print why on stderr and return -1. */
int net_listen(unsigned port, unsigned *bound);

/* Wait until a connection or a client is ready, serve everything that is ready, and return.
 * Each complete request line is answered through protocol_handle().  Exits on a fatal error. */
void net_poll(int listen_fd);

#endif
