/*
 * fuzz_config.c - libFuzzer target for the configuration loader
 * (libmta/config.c: the INI file through libinih, and the
 * MTAD_<SECTION>_<KEY> environment overrides).  The input is the file
 * text, optionally followed by a NUL byte and environment entries, one
 * per line ("MTAD_SERVER_LISTEN=...").  The file reaches the loader by
 * its real path (a memfd under /proc/self/fd).
 *
 * Checks: a failure leaves *out NULL and one line of reason; a
 * success prints (mta_config_print), and the printed text loads again
 * and prints the same (config.h: --check-config output gives an equal
 * snapshot).
 */
#include "config.h"
#include "err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ENV 32

static int memfile(const void *p, size_t n, char *path, size_t len)
{
	int fd = memfd_create("fuzz_config", MFD_CLOEXEC);
	if (fd < 0)
		abort();
	if (n > 0 && write(fd, p, n) != (ssize_t)n)
		abort();
	snprintf(path, len, "/proc/self/fd/%d", fd);
	return fd;
}

/* One line.  (Not "printable": config.c echoes a bad section name's
 * bytes, CR included, into the message as the file holds them.) */
static void check_err(const char *err)
{
	if (err[0] == '\0' || strchr(err, '\n') != NULL)
		abort();
}

/* The effective configuration as text (malloc'd, *len bytes). */
static void print_to(const struct mta_config *c, char **text, size_t *len)
{
	FILE *f = open_memstream(text, len);
	if (f == NULL)
		abort();
	mta_config_print(c, f);
	if (fclose(f) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t flen = nul ? (size_t)(nul - data) : size;
	char *envbuf = NULL, *envp[MAX_ENV + 1];
	size_t nenv = 0;
	struct mta_config *c = NULL, *c2 = NULL;
	char path[64], err[512];
	char *t1 = NULL, *t2 = NULL;
	size_t l1 = 0, l2 = 0;
	int fd, fd2;

	if (size > 1 << 16)
		return 0;
	if (nul != NULL) {
		size_t elen = size - flen - 1;
		envbuf = malloc(elen + 1);
		if (envbuf == NULL)
			return 0;
		memcpy(envbuf, nul + 1, elen);
		envbuf[elen] = '\0';
		for (char *s = envbuf, *e; s && nenv < MAX_ENV; s = e) {
			e = strchr(s, '\n');
			if (e != NULL)
				*e++ = '\0';
			if (*s != '\0')
				envp[nenv++] = s;
		}
	}
	envp[nenv] = NULL;

	fd = memfile(data, flen, path, sizeof(path));
	err[0] = '\0';
	if (mta_config_load(path, envp, &c, err, sizeof(err)) != 0) {
		if (c != NULL)
			abort();
		check_err(err);
		goto out;
	}
	print_to(c, &t1, &l1);
	/* the printed configuration loads again, without the environment */
	fd2 = memfile(t1, l1, path, sizeof(path));
	char *none[] = {NULL};
	if (mta_config_load(path, none, &c2, err, sizeof(err)) != 0)
		abort();
	print_to(c2, &t2, &l2);
	if (l1 != l2 || memcmp(t1, t2, l1) != 0)
		abort();
	close(fd2);
	mta_config_free(c2);
	mta_config_free(c);
out:
	close(fd);
	free(t1);
	free(t2);
	free(envbuf);
	return 0;
}
