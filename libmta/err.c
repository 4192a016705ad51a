#include "err.h"

#include <string.h>

const char *mta_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
#define MTA_ERR_MSG(name, val, msg) \
	case (val):                 \
		return (msg);
		MTA_ERR_MAP(MTA_ERR_MSG)
#undef MTA_ERR_MSG
	default:
		break;
	}
	if (err < 0 && err > -4096)
		return strerror(-err);
	return "unknown error";
}

const char *mta_errname(int err)
{
	switch (err) {
	case 0:
		return "OK";
#define MTA_ERR_NAME(name, val, msg) \
	case (val):                  \
		return "MTA_" #name;
		MTA_ERR_MAP(MTA_ERR_NAME)
#undef MTA_ERR_NAME
	default:
		break;
	}
	if (err < 0 && err > -4096) {
		const char *n = strerrorname_np(-err);
		if (n != NULL)
			return n;
	}
	return "EUNKNOWN";
}
