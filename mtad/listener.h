/*
 * listener.h - mtad's inbound SMTP: listening sockets and sessions.
 *
 * DESCRIPTION
 *	mtad_listener_start() binds every server.listen address and accepts
 *	sessions on the loop.  Each session couples a TCP handle, a timer, the
 *	sans-I/O SMTP engine (smtp_server.h), an optional TLS layer (tls.h)
 *	and a body sink (spool.h); complete messages go to the writer thread
 *	(writer.h) and the 250 is sent from the commit callback.
 *
 *	mtad_listener_shutdown() stops accepting, tells every idle session
 *	"421 4.3.2" and closes it; a session waiting for a commit gets its
 *	reply first.  done() is called once every session and listening
 *	socket is closed.
 *
 * THREADS
 *	Loop thread only.
 *
 * SECURITY
 *	Memory per session is bounded: the engine's fixed buffers, at most
 *	MTAD_INBUF_MAX bytes of unprocessed input (reading stops beyond it),
 *	at most MTAD_OUTBUF_MAX bytes of unsent output (the engine stops
 *	beyond it), and a body in memory up to MTAD_BODY_SPILL bytes, then in
 *	an unlinked file in the spool's tmp directory.
 */
#ifndef MTAD_LISTENER_H
#define MTAD_LISTENER_H

#include "config.h"
#include "spool.h"
#include "tls.h"
#include "writer.h"

#include <uv.h>

#define MTAD_INBUF_MAX (64 * 1024)
#define MTAD_OUTBUF_MAX (256 * 1024)
#define MTAD_BODY_SPILL (256 * 1024)

struct mtad_listener;

struct mtad_listener_params {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	const struct mta_tls_creds *tls; /* NULL: no STARTTLS */
	void (*on_queued)(void *arg);	 /* after each committed message */
	void *on_queued_arg;
};

int mtad_listener_start(const struct mtad_listener_params *p,
			struct mtad_listener **out);
void mtad_listener_shutdown(struct mtad_listener *l, void (*done)(void *arg),
			    void *arg);
void mtad_listener_free(struct mtad_listener *l);

#endif
