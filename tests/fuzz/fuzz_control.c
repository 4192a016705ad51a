/*
 * fuzz_control.c - libFuzzer target for the control protocol codec
 * (libmta/control.c).  The input is a byte stream from a peer: it is split
 * into lines and every line is parsed as a hello, a request and a reply.
 * A request that parses must format back to a line that parses to the
 * same request.
 */
#include "control.h"
#include "err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mta_ctl_lines l;
	size_t off = 0;

	memset(&l, 0, sizeof(l));
	while (off < size) {
		const char *line = NULL;
		size_t used = 0;
		int rc = mta_ctl_lines_feed(&l, data + off, size - off, &used,
					    &line);
		if (rc == MTA_ETOOBIG)
			return 0;
		if (rc < 0 || used == 0 || used > size - off)
			abort();
		off += used;
		if (rc == 0)
			break;
		if (strlen(line) > MTA_CTL_LINE_MAX || strchr(line, '\n'))
			abort();
		struct mta_ctl_req r, r2;
		struct mta_ctl_reply rep;
		unsigned v;
		(void)mta_ctl_parse_hello(line, &v);
		if (mta_ctl_parse_reply(line, &rep) == 0 &&
		    rep.kind == MTA_CTL_ERR && rep.code_len == 0)
			abort();
		if (mta_ctl_parse_req(line, &r) != 0)
			continue;
		char out[MTA_CTL_LINE_MAX * 3 + 8];
		const char *args[MTA_CTL_MAX_ARGS];
		for (size_t i = 0; i < r.nargs; i++)
			args[i] = r.args[i];
		if (mta_ctl_format_req(out, sizeof(out), r.verb, args,
				       r.nargs) != 0)
			continue; /* may pass the line limit once escaped */
		out[strlen(out) - 1] = '\0';
		if (mta_ctl_parse_req(out, &r2) != 0 || r2.verb != r.verb ||
		    r2.nargs != r.nargs)
			abort();
		for (size_t i = 0; i < r.nargs; i++)
			if (strcmp(r.args[i], r2.args[i]) != 0)
				abort();
	}
	return 0;
}
