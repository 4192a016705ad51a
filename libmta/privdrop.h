/*
 * privdrop.h - drop root for good after start-up.
 *
 * DESCRIPTION
 *	mta_privdrop_resolve() decides who the daemon will run as.  Started
 *	by root (euid 0), it looks up server.user and server.group in the
 *	system databases (getpwnam/getgrnam) and fills *pd with their ids
 *	(pd->active = true); a user or group that does not exist, or that
 *	is root (uid 0 / gid 0), is an error: the daemon refuses to start
 *	rather than keep root.  Started by anyone else (the container case,
 *	`make run` as an ordinary user) it fills pd->active = false and the
 *	current ids: the process runs as it is.
 *
 *	mta_privdrop_check_dir() is called before the spool is opened: when
 *	pd is active, a missing directory is created (0700) and given to the
 *	user; an existing directory, or an entry directly inside it, owned
 *	by anyone other than the user is an error whose text names the fix
 *	(`chown -R user:group DIR`).  mta_privdrop_own_dir() is called after
 *	the daemon (still root) created its files in the directory (LMDB
 *	files, the lock file, getdns's directory): entries owned by root
 *	are given to the user (and to its group when their group is root's;
 *	another group, such as control.socket's control.group, is kept), so
 *	the daemon after the drop and the spool tools run as that user can
 *	use them.  Both do nothing when pd is
 *	not active.
 *
 *	mta_privdrop_apply() drops: setgroups(0, NULL), setresgid(gid x3),
 *	setresuid(uid x3) (real, effective, saved; the fs ids follow), then
 *	checks that setuid(0) and setgid(0) now fail and that every id is
 *	the user's, and finally sets PR_SET_NO_NEW_PRIVS (also when not
 *	active: it is what lets an unprivileged process install seccomp).
 *	Any failure is fatal for the caller: the text in err says which step.
 *
 * THREADS
 *	Start-up only, before any thread is started: set*id() in glibc
 *	signals every thread, but a thread started before the drop must not
 *	exist anyway (Landlock, applied right after, covers only the calling
 *	thread and its future children).
 *
 * OWNERSHIP
 *	struct mta_privdrop is caller-owned plain data.
 *
 * ERRORS
 *	0 or -1 with one line (no newline) in err.
 *
 * SECURITY
 *	The names come from the operator's config.  After
 *	mta_privdrop_apply() returns 0 the process can never regain root:
 *	no saved uid 0, no supplementary groups, no file capabilities or
 *	setuid binaries honoured (no_new_privs).
 *
 * CAVEATS
 *	Listening sockets below 1024 must be opened before the drop.  A
 *	capability-only start (non-root with CAP_NET_BIND_SERVICE) is "not
 *	root" here and keeps its ids.
 */
#ifndef MTA_PRIVDROP_H
#define MTA_PRIVDROP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct mta_privdrop {
	bool active; /* started as root: the drop will happen */
	uid_t uid;
	gid_t gid;
	char user[40];
	char group[40];
};

int mta_privdrop_resolve(const char *user, const char *group,
			 struct mta_privdrop *pd, char *err, size_t errlen);
int mta_privdrop_check_dir(const struct mta_privdrop *pd, const char *dir,
			   char *err, size_t errlen);
int mta_privdrop_own_dir(const struct mta_privdrop *pd, const char *dir,
			 char *err, size_t errlen);
int mta_privdrop_apply(const struct mta_privdrop *pd, char *err,
		       size_t errlen);

#endif
