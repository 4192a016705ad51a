/*
 * tool.h - what the spool tools share: finding the config and the spool.
 *
 * DESCRIPTION
 *	tool_load_config() loads the configuration the way every tool does:
 *	the file given with -c, else $MTAD_CONFIG, else /etc/mtad/mtad.conf if
 *	it exists, else built-in defaults; MTAD_<SECTION>_<KEY> overrides
 *	always apply.  On error it prints "<prog>: <reason>" and returns 2
 *	(the tools' exit status for bad usage or config).
 *
 *	tool_open_spool() opens the spool read-only (readonly true) or for
 *	writing; a missing spool gives "<prog>: spool <dir> does not exist"
 *	and 1.
 */
#ifndef MTA_TOOL_H
#define MTA_TOOL_H

#include "config.h"
#include "spool.h"

#include <stdbool.h>

int tool_load_config(const char *prog, const char *path,
		     struct mta_config **out);
int tool_open_spool(const char *prog, const struct mta_config *cfg,
		    bool readonly, struct mta_spool **out);

#endif
