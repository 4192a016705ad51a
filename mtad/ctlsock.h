/*
 * ctlsock.h - mtad's control socket: the spool tools' changes go through
 * here, so the scheduler's view and the spool never disagree.
 *
 * DESCRIPTION
 *	mtad_control_open() listens on control.socket (a stale socket file
 *	is replaced; mode 0660, group control.group when set).  It runs at
 *	start-up before the privilege drop, so any control.group can be
 *	given (docs/security.md).  mtad_control_start(), after the writer
 *	is running, starts serving the protocol of libmta/control.h;
 *	connections made in between wait in the backlog.  Every change is a writer request
 *	(MTA_COMMIT_ADMIN, MTA_COMMIT_STS_PUT) answered after its commit; a
 *	change to a message that is being delivered waits (polling every
 *	100 ms, at most 30 s, then "ERR busy") until its outcome is
 *	committed.  BOUNCE marks the pending recipients failed (5.0.0,
 *	"bounced by the administrator"), builds the DSN with dsn.h like
 *	delivery does, and removes the message and stores the DSN in one
 *	transaction.  RELEASE and FLUSH kick the scheduler.  Each change is
 *	logged as event=control with verb, arg, result and the peer's uid,
 *	gid and pid (SO_PEERCRED).
 *
 *	mtad_control_stop() closes the listening socket (unlinking it) and
 *	every connection; a connection waiting for the writer is freed by
 *	the writer's done callback (mta_writer_stop runs it).  A control
 *	socket opened but never started is stopped the same way.  Run the loop
 *	afterwards so the handles close.
 *
 * THREADS
 *	Loop thread.
 *
 * OWNERSHIP
 *	The params and the pointers they hold are borrowed; *delivery and
 *	*mtasts are read at each request (NULL when that part is not
 *	running) and must be cleared by the owner before it frees them.
 */
#ifndef MTAD_CONTROL_H
#define MTAD_CONTROL_H

#include "config.h"
#include "delivery.h"
#include "mtasts.h"
#include "spool.h"
#include "writer.h"

#include <uv.h>

struct mtad_control;

struct mtad_control_params {
	uv_loop_t *loop;
	const struct mta_config *cfg;
	struct mta_spool *spool;
	struct mta_writer *writer;
	struct mta_delivery *const *delivery;
	struct mta_mtasts *const *mtasts;
	const char *version;
};

int mtad_control_open(uv_loop_t *loop, const struct mta_config *cfg,
		      struct mtad_control **out);
void mtad_control_start(struct mtad_control *c,
			const struct mtad_control_params *p);
void mtad_control_stop(struct mtad_control *c);

#endif
