#!/bin/sh
# check_layers.sh SOURCE-ROOT - the engines stay below the I/O modules.
#
# The engines (SMTP server and client, DANE matcher, MTA-STS parser, DSN,
# TLS policy table and the outbound decision, policy.c) are sans-I/O: they
# may include the base (err.h, log.h), the plain data modules (envelope.h,
# records.h), each other, and system or crypto headers -- never a module
# above them (resolver, spool, writer, TLS session, delivery, MTA-STS
# fetcher, config, queue, ...) nor an event-loop or I/O library (libuv,
# getdns, LMDB, curl, inih).  Fails (exit 1, one line per include) when one
# does.  docs/architecture.md "Outbound TLS decision (policy.c)".
set -eu

root=${1:-.}
lib="$root/libmta"
engines="smtp_server smtp_server_body smtp_server_int smtp_syntax smtp_client dane sts dsn tlspolicy policy http_request ct dkim"
base="err log envelope records"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

allowed() {
	for a in $engines $base; do
		[ "$1" = "$a.h" ] && return 0
	done
	return 1
}

for e in $engines; do
	for f in "$lib/$e.h" "$lib/$e.c"; do
		[ -f "$f" ] || continue
		# "local" includes: only engines and the base
		grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" |
		while IFS= read -r line; do
			h=$(printf '%s\n' "$line" | sed 's/.*"\([^"]*\)".*/\1/')
			if ! allowed "$h"; then
				echo "$f:${line%%:*}: engine includes \"$h\" (a module above the engines)"
				echo x >>"$tmp"
			fi
		done
		# loop and I/O libraries
		grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*<(uv\.h|uv/|getdns/|lmdb\.h|curl/|ini\.h)' "$f" |
		while IFS= read -r line; do
			echo "$f:${line%%:*}: engine includes an I/O library: ${line#*:}"
			echo x >>"$tmp"
		done
	done
done

if [ -s "$tmp" ]; then
	exit 1
fi
echo "layers: engines include nothing above them ($engines)"
