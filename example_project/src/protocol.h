/* protocol.h - the request/reply protocol: one line each way (see README.md). */
#ifndef KVD_PROTOCOL_H
#define KVD_PROTOCOL_H

#include <stddef.h>

#define REQUEST_MAX 512  /* longest request line kvd accepts, '\n' included */
#define REPLY_MAX 256    /* room for any reply line, '\n' included */

/* Run the request in LINE (NUL-terminated, without its '\n'; split in place) and write the reply
 * line, without its '\n', into REPLY (SIZE bytes, NUL-terminated).  Return the reply's length. */
size_t protocol_handle(char *line, char *reply, size_t size);

#endif
