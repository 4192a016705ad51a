/*
 * auth.c - the AUTH users file, yescrypt hashes, the failure limiter.
 * See auth.h.
 */
#include "auth.h"

#include "err.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINE_MAX_USERS 1024 /* one users file line, with the newline */
#define DELAY_CAP_MS 30000u

struct entry {
	char *user;
	char *hash;
};

struct mta_auth_users {
	atomic_uint refs; /* inbound sessions of every loop thread */
	size_t n;
	struct entry *e;
};

/* A setting that makes an unknown user cost one real hash. */
static const char dummy_setting[] = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$";

bool mta_auth_name_ok(const char *user)
{
	size_t n = 0;

	for (; user[n] != '\0'; n++)
		if (user[n] <= ' ' || user[n] >= 127 || user[n] == ':')
			return false;
	return n > 0 && n <= MTA_AUTH_NAME_MAX;
}

static void users_free(struct mta_auth_users *u)
{
	for (size_t i = 0; i < u->n; i++) {
		free(u->e[i].user);
		explicit_bzero(u->e[i].hash, strlen(u->e[i].hash));
		free(u->e[i].hash);
	}
	free(u->e);
	free(u);
}

static int add_entry(struct mta_auth_users *u, const char *user,
		     const char *hash)
{
	struct entry *ne = realloc(u->e, (u->n + 1) * sizeof(*ne));

	if (ne == NULL)
		return -ENOMEM;
	u->e = ne;
	ne[u->n].user = strdup(user);
	ne[u->n].hash = strdup(hash);
	if (ne[u->n].user == NULL || ne[u->n].hash == NULL) {
		free(ne[u->n].user);
		free(ne[u->n].hash);
		return -ENOMEM;
	}
	u->n++;
	return 0;
}

/* One line of the file (no newline); 0, or MTA_ECONFIG with why. */
static int parse_line(struct mta_auth_users *u, char *line, const char **why)
{
	char *colon, *hash;

	if (line[0] == '\0' || line[0] == '#')
		return 0;
	colon = strchr(line, ':');
	if (colon == NULL) {
		*why = "expected user:hash";
		return MTA_ECONFIG;
	}
	*colon = '\0';
	hash = colon + 1;
	if (!mta_auth_name_ok(line)) {
		*why = "bad user name (1..255 printable octets, no ':')";
		return MTA_ECONFIG;
	}
	if (crypt_checksalt(hash) != CRYPT_SALT_OK) {
		*why = "not a strong crypt(5) hash (make one with mtactl "
		       "passwd)";
		return MTA_ECONFIG;
	}
	for (size_t i = 0; i < u->n; i++)
		if (strcmp(u->e[i].user, line) == 0) {
			*why = "duplicate user";
			return MTA_ECONFIG;
		}
	if (add_entry(u, line, hash) != 0) {
		*why = "out of memory";
		return -ENOMEM;
	}
	return 0;
}

int mta_auth_users_load(const char *path, struct mta_auth_users **out,
			char *err, size_t errlen)
{
	char line[LINE_MAX_USERS];
	struct mta_auth_users *u;
	unsigned lineno = 0;
	FILE *f;
	int rc = 0;

	f = fopen(path, "re");
	if (f == NULL) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return rc;
	}
	u = calloc(1, sizeof(*u));
	if (u == NULL) {
		fclose(f);
		snprintf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	u->refs = 1;
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t n = strlen(line);
		const char *why = "";

		lineno++;
		if (n > 0 && line[n - 1] == '\n')
			line[--n] = '\0';
		else if (!feof(f)) {
			snprintf(err, errlen, "%s:%u: line too long", path,
				 lineno);
			rc = MTA_ECONFIG;
			break;
		}
		if (n > 0 && line[n - 1] == '\r')
			line[--n] = '\0';
		rc = parse_line(u, line, &why);
		if (rc != 0) {
			snprintf(err, errlen, "%s:%u: %s", path, lineno, why);
			break;
		}
	}
	if (rc == 0 && ferror(f)) {
		rc = -EIO;
		snprintf(err, errlen, "%s: read error", path);
	}
	explicit_bzero(line, sizeof(line));
	fclose(f);
	if (rc != 0) {
		users_free(u);
		return rc;
	}
	*out = u;
	return 0;
}

struct mta_auth_users *mta_auth_users_ref(struct mta_auth_users *u)
{
	if (u != NULL)
		atomic_fetch_add_explicit(&u->refs, 1, memory_order_relaxed);
	return u;
}

void mta_auth_users_unref(struct mta_auth_users *u)
{
	if (u != NULL &&
	    atomic_fetch_sub_explicit(&u->refs, 1, memory_order_acq_rel) == 1)
		users_free(u);
}

/* Constant-time equality of two NUL-terminated strings of public length
 * (hash outputs). */
static bool ct_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char d = la != lb;

	for (size_t i = 0; i < la && i < lb; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

int mta_auth_verify(const struct mta_auth_users *u, const char *user,
		    const char *pass)
{
	const char *setting = dummy_setting;
	struct crypt_data *cd;
	const char *h;
	bool found = false;
	int rc;

	for (size_t i = 0; u != NULL && i < u->n; i++)
		if (strcmp(u->e[i].user, user) == 0) {
			setting = u->e[i].hash;
			found = true;
			break;
		}
	cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		return -ENOMEM;
	h = crypt_r(pass, setting, cd);
	rc = (found && h != NULL && h[0] != '*' && ct_equal(h, setting))
		     ? 0
		     : MTA_ENOTFOUND;
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return rc;
}

int mta_auth_hash(const char *pass, char *out, size_t outlen)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd;
	const char *h;
	int rc = 0;

	/* rbytes NULL: libxcrypt takes the salt from the kernel's CSPRNG */
	if (crypt_gensalt_rn("$y$", 0, NULL, 0, setting, sizeof(setting)) ==
	    NULL)
		return errno != 0 ? -errno : MTA_EAGAIN;
	cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		return -ENOMEM;
	h = crypt_r(pass, setting, cd);
	if (h == NULL || h[0] == '*')
		rc = -EINVAL;
	else if (strlen(h) >= outlen)
		rc = MTA_ETOOBIG;
	else
		memcpy(out, h, strlen(h) + 1);
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return rc;
}

/* fsync the directory holding path (after a rename into it). */
static int sync_dir(const char *path)
{
	char *copy = strdup(path);
	int fd, rc = 0;

	if (copy == NULL)
		return -ENOMEM;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(copy);
	if (fd < 0)
		return -errno;
	if (fsync(fd) != 0)
		rc = -errno;
	close(fd);
	return rc;
}

int mta_auth_users_file_set(const char *path, const char *user,
			    const char *hash)
{
	char tmp[4096], line[LINE_MAX_USERS];
	size_t ul = strlen(user);
	bool replaced = false;
	struct stat st;
	mode_t mode = 0640;
	FILE *in, *out;
	int fd, rc = 0;

	if (!mta_auth_name_ok(user) || crypt_checksalt(hash) != CRYPT_SALT_OK)
		return MTA_ECONFIG;
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path,
			     (long)getpid()) >= sizeof(tmp))
		return -ENAMETOOLONG;
	in = fopen(path, "re");
	if (in == NULL && errno != ENOENT)
		return -errno;
	if (in != NULL && fstat(fileno(in), &st) == 0)
		mode = st.st_mode & 07777;
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0) {
		rc = -errno;
		goto out_in;
	}
	if (in != NULL)
		(void)fchown(fd, (uid_t)-1, st.st_gid); /* keep the group */
	(void)fchmod(fd, mode);
	out = fdopen(fd, "w");
	if (out == NULL) {
		rc = -errno;
		close(fd);
		goto out_tmp;
	}
	while (in != NULL && fgets(line, sizeof(line), in) != NULL) {
		if (strncmp(line, user, ul) == 0 && line[ul] == ':') {
			if (!replaced)
				fprintf(out, "%s:%s\n", user, hash);
			replaced = true;
			continue;
		}
		fputs(line, out);
		if (strchr(line, '\n') == NULL && !feof(in))
			continue; /* the rest of a long line follows */
		if (strchr(line, '\n') == NULL)
			fputc('\n', out);
	}
	explicit_bzero(line, sizeof(line));
	if (in != NULL && ferror(in))
		rc = -EIO;
	if (!replaced)
		fprintf(out, "%s:%s\n", user, hash);
	if (fflush(out) != 0 || fsync(fileno(out)) != 0)
		rc = rc != 0 ? rc : -errno;
	if (fclose(out) != 0 && rc == 0)
		rc = -errno;
	if (rc != 0)
		goto out_tmp;
	/* the new file is complete and on disk: now it replaces the old */
	if (rename(tmp, path) != 0) {
		rc = -errno;
		goto out_tmp;
	}
	rc = sync_dir(path);
	goto out_in;
out_tmp:
	unlink(tmp);
out_in:
	if (in != NULL)
		fclose(in);
	return rc;
}

/* ---- limiter ----------------------------------------------------------- */

void mta_auth_limit_init(struct mta_auth_limit *l, unsigned max_failures,
			 uint64_t base_delay_ms, uint64_t window_ms)
{
	memset(l, 0, sizeof(*l));
	l->max_failures = max_failures;
	l->base_delay_ms = base_delay_ms;
	l->window_ms = window_ms;
}

static struct mta_auth_limit_slot *find(struct mta_auth_limit *l,
					const uint8_t key[16], uint64_t now)
{
	for (size_t i = 0; i < MTA_AUTH_LIMIT_SLOTS; i++) {
		struct mta_auth_limit_slot *s = &l->slot[i];
		if (s->last_ms == 0)
			continue;
		if (now - s->last_ms > l->window_ms) {
			s->last_ms = 0; /* expired */
			continue;
		}
		if (memcmp(s->key, key, 16) == 0)
			return s;
	}
	return NULL;
}

bool mta_auth_limit_check(struct mta_auth_limit *l, const uint8_t key[16],
			  uint64_t now_ms)
{
	struct mta_auth_limit_slot *s = find(l, key, now_ms);

	return s == NULL || s->failures < l->max_failures;
}

uint64_t mta_auth_limit_fail(struct mta_auth_limit *l, const uint8_t key[16],
			     uint64_t now_ms)
{
	struct mta_auth_limit_slot *s = find(l, key, now_ms), *old = NULL;
	uint64_t d;

	if (now_ms == 0)
		now_ms = 1; /* 0 marks a free slot */
	if (s == NULL) {
		for (size_t i = 0; i < MTA_AUTH_LIMIT_SLOTS; i++) {
			struct mta_auth_limit_slot *c = &l->slot[i];
			if (c->last_ms == 0) {
				old = c;
				break;
			}
			if (old == NULL || c->last_ms < old->last_ms)
				old = c;
		}
		s = old;
		memcpy(s->key, key, 16);
		s->failures = 0;
	}
	s->failures++;
	s->last_ms = now_ms;
	d = l->base_delay_ms;
	for (unsigned i = 1; i < s->failures && d < DELAY_CAP_MS; i++)
		d *= 2;
	return d < DELAY_CAP_MS ? d : DELAY_CAP_MS;
}

void mta_auth_limit_ok(struct mta_auth_limit *l, const uint8_t key[16])
{
	for (size_t i = 0; i < MTA_AUTH_LIMIT_SLOTS; i++)
		if (l->slot[i].last_ms != 0 &&
		    memcmp(l->slot[i].key, key, 16) == 0)
			l->slot[i].last_ms = 0;
}
