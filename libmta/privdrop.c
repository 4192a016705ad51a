#include "privdrop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

int mta_privdrop_resolve(const char *user, const char *group,
			 struct mta_privdrop *pd, char *err, size_t errlen)
{
	char buf[4096];
	struct passwd pw, *pwp = NULL;
	struct group gr, *grp = NULL;

	memset(pd, 0, sizeof(*pd));
	pd->uid = getuid();
	pd->gid = getgid();
	if (geteuid() != 0)
		return 0;
	if (getpwnam_r(user, &pw, buf, sizeof(buf), &pwp) != 0 ||
	    pwp == NULL) {
		snprintf(err, errlen,
			 "started as root, but server.user '%s' does not "
			 "exist; create it (useradd --system --no-create-home "
			 "%s) or set server.user to an unprivileged user",
			 user, user);
		return -1;
	}
	if (pw.pw_uid == 0) {
		snprintf(err, errlen,
			 "server.user '%s' is root (uid 0); mtad does not run "
			 "as root: name an unprivileged user",
			 user);
		return -1;
	}
	pd->uid = pw.pw_uid;
	if (getgrnam_r(group, &gr, buf, sizeof(buf), &grp) != 0 ||
	    grp == NULL) {
		snprintf(err, errlen,
			 "started as root, but server.group '%s' does not "
			 "exist; create it (groupadd --system %s) or set "
			 "server.group",
			 group, group);
		return -1;
	}
	if (gr.gr_gid == 0) {
		snprintf(err, errlen,
			 "server.group '%s' is gid 0; name an unprivileged "
			 "group",
			 group);
		return -1;
	}
	pd->gid = gr.gr_gid;
	snprintf(pd->user, sizeof(pd->user), "%s", user);
	snprintf(pd->group, sizeof(pd->group), "%s", group);
	pd->active = true;
	return 0;
}

static void fix_hint(const struct mta_privdrop *pd, const char *dir,
		     const char *what, char *err, size_t errlen)
{
	snprintf(err, errlen,
		 "%s is owned by another user than server.user '%s'; fix "
		 "with: chown -R %s:%s %s",
		 what, pd->user, pd->user, pd->group, dir);
}

int mta_privdrop_check_dir(const struct mta_privdrop *pd, const char *dir,
			   char *err, size_t errlen)
{
	struct stat st;
	struct dirent *e;
	DIR *d;
	int rc = 0;

	if (!pd->active)
		return 0;
	if (mkdir(dir, 0700) == 0) {
		if (chown(dir, pd->uid, pd->gid) != 0) {
			snprintf(err, errlen, "%s: chown: %s", dir,
				 strerror(errno));
			return -1;
		}
		return 0;
	}
	if (errno != EEXIST || lstat(dir, &st) != 0) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "%s: not a directory", dir);
		return -1;
	}
	if (st.st_uid != pd->uid) {
		fix_hint(pd, dir, dir, err, errlen);
		return -1;
	}
	if ((d = opendir(dir)) == NULL) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	while (rc == 0 && (e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) ==
			    0 &&
		    st.st_uid != pd->uid) {
			char what[600];
			snprintf(what, sizeof(what), "%s/%s", dir, e->d_name);
			fix_hint(pd, dir, what, err, errlen);
			rc = -1;
		}
	}
	closedir(d);
	return rc;
}

int mta_privdrop_own_dir(const struct mta_privdrop *pd, const char *dir,
			 char *err, size_t errlen)
{
	struct stat st;
	struct dirent *e;
	DIR *d;
	int rc = 0;

	if (!pd->active)
		return 0;
	if ((d = opendir(dir)) == NULL) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	while (rc == 0 && (e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, "..") == 0)
			continue;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) !=
			    0 ||
		    st.st_uid != 0)
			continue;
		/* a group root chose stays (control.socket's
		 * control.group); root's own group becomes the user's */
		if (fchownat(dirfd(d), e->d_name, pd->uid,
			     st.st_gid == 0 ? pd->gid : (gid_t)-1,
			     AT_SYMLINK_NOFOLLOW) != 0) {
			snprintf(err, errlen, "%s/%s: chown: %s", dir,
				 e->d_name, strerror(errno));
			rc = -1;
		}
	}
	closedir(d);
	return rc;
}

int mta_privdrop_apply(const struct mta_privdrop *pd, char *err,
		       size_t errlen)
{
	uid_t r, e, s;
	gid_t rg, eg, sg;

	if (pd->active) {
		if (setgroups(0, NULL) != 0) {
			snprintf(err, errlen, "setgroups: %s", strerror(errno));
			return -1;
		}
		if (setresgid(pd->gid, pd->gid, pd->gid) != 0) {
			snprintf(err, errlen, "setresgid(%u): %s",
				 (unsigned)pd->gid, strerror(errno));
			return -1;
		}
		if (setresuid(pd->uid, pd->uid, pd->uid) != 0) {
			snprintf(err, errlen, "setresuid(%u): %s",
				 (unsigned)pd->uid, strerror(errno));
			return -1;
		}
		/* regaining root must fail now */
		if (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0) {
			snprintf(err, errlen,
				 "root could be regained after the drop");
			return -1;
		}
		if (getresuid(&r, &e, &s) != 0 || getresgid(&rg, &eg, &sg) ||
		    r != pd->uid || e != pd->uid || s != pd->uid ||
		    rg != pd->gid || eg != pd->gid || sg != pd->gid ||
		    getgroups(0, NULL) != 0) {
			snprintf(err, errlen,
				 "ids after the drop are not the user's");
			return -1;
		}
	}
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		snprintf(err, errlen, "PR_SET_NO_NEW_PRIVS: %s",
			 strerror(errno));
		return -1;
	}
	return 0;
}
