#include "tool.h"

#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

int tool_load_config(const char *prog, const char *path,
		     struct mta_config **out)
{
	char err[1024] = "";

	if (path == NULL)
		path = getenv("MTAD_CONFIG");
	if (path == NULL && access("/etc/mtad/mtad.conf", R_OK) == 0)
		path = "/etc/mtad/mtad.conf";
	if (mta_config_load(path, environ, out, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", prog, err);
		return 2;
	}
	return 0;
}

int tool_open_spool(const char *prog, const struct mta_config *cfg,
		    bool readonly, struct mta_spool **out)
{
	char why[1024] = "";
	struct mta_spool_opts o = {
		.dir = cfg->spool_dir,
		.max_size = cfg->spool_max_size,
		.readonly = readonly,
		.why = why,
		.whylen = sizeof(why),
	};
	struct stat st;
	int rc;

	if (stat(cfg->spool_dir, &st) != 0) {
		fprintf(stderr, "%s: spool %s does not exist\n", prog,
			cfg->spool_dir);
		return 1;
	}
	mta_spool_trap_sigbus(prog, cfg->spool_dir);
	rc = mta_spool_open(&o, out);
	if (rc != 0) {
		fprintf(stderr, "%s: spool %s: %s\n", prog, cfg->spool_dir,
			why[0] ? why : mta_strerror(rc));
		return 1;
	}
	return 0;
}
