#!/bin/sh
# check_docs.sh SOURCE-ROOT - the configuration keys of the code, the docs and
# the example config agree.
#
# Fails (exit 1, one line per problem) when a key of the key table in
# libmta/config.c (the lines `KEY("section", "key", "default", ...)`)
#   - is missing from the key table of docs/configuration.md
#     (rows `| \`section.key\` | \`default\` | meaning |` under the heading
#     "## Keys", an empty default written `*empty*`), or is documented with
#     another default;
#   - is missing from etc/mtad.conf (as `key =` or commented out as
#     `;key =` / `#key =`, no blank after the comment sign, under its
#     [section]; "; text = x" with a blank is prose);
# or when the docs or etc/mtad.conf name a key the code does not know, or the
# docs list a key twice.  Modelled on Postfix's check-postconf-undocumented.
#
# Planned keys (documented, not implemented) are never silent:
#   - a key the code parses but nothing outside libmta/config.c reads (its
#     struct mta_config field is used nowhere else; listen and CIDR keys are
#     read through their parsed arrays) must have a meaning starting with
#     `*planned*` in the key table, and a key marked so must be unused;
#   - the section "## Planned keys" of docs/configuration.md lists keys the
#     code does not know yet (rows `| \`section.key\` | meaning |`); none may
#     be in the code, and every key of the key table in DESIGN.md (the
#     second argument, default SOURCE-ROOT/../shared/DESIGN.md, skipped when
#     absent) must be in the code or in that list.
# The planned keys are printed on success.
set -eu

root=${1:-.}
design=${2:-$root/../shared/DESIGN.md}
code="$root/libmta/config.c"
docs="$root/docs/configuration.md"
conf="$root/etc/mtad.conf"

for f in "$code" "$docs" "$conf"; do
	if [ ! -r "$f" ]; then
		echo "check_docs: cannot read $f" >&2
		exit 1
	fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# key<TAB>default, from the code
grep -E '^[[:space:]]*KEY\("' "$code" |
	awk -F'"' '{ printf "%s.%s\t%s\n", $2, $4, $6 }' >"$tmp/code"
if [ ! -s "$tmp/code" ]; then
	echo "check_docs: no KEY(...) lines found in $code" >&2
	exit 1
fi

# key<TAB>default, from the docs' key table: the rows of the section
# "## Keys" (up to the next "## " heading)
awk '/^## / { in_keys = ($0 ~ /^## Keys[ \t]*$/); next } in_keys' "$docs" |
	grep -E '^\|[[:space:]]*`[a-z0-9_]+\.[a-z0-9_]+`[[:space:]]*\|' |
	awk -F'|' '{
		k = $2; d = $3
		gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/`/, "", k)
		gsub(/^[ \t]+|[ \t]+$/, "", d)
		if (d == "*empty*") d = ""
		else if (d ~ /^`.*`$/) d = substr(d, 2, length(d) - 2)
		else d = "<not a code span: " d ">"
		printf "%s\t%s\n", k, d
	}' >"$tmp/docs"

# section.key present in etc/mtad.conf (set or commented out)
awk '
	/^[ \t]*\[[a-z0-9_]+\][ \t]*$/ {
		s = $0; gsub(/[][ \t]/, "", s); next
	}
	/^[ \t]*[#;]?[a-z0-9_]+[ \t]*=/ {
		k = $0; sub(/^[ \t]*[#;]?/, "", k); sub(/[ \t]*=.*/, "", k)
		if (s != "") print s "." k
	}' "$conf" | sort -u >"$tmp/conf"

fail=0
problem() {
	echo "check_docs: $*" >&2
	fail=1
}

tab=$(printf '\t')
while IFS="$tab" read -r key def; do
	line=$(awk -F'\t' -v k="$key" '$1 == k { print; exit }' "$tmp/docs")
	if [ -z "$line" ]; then
		problem "$key (default '$def') is not documented in docs/configuration.md"
	else
		ddef=${line#*"$tab"}
		if [ "$ddef" != "$def" ]; then
			problem "$key: docs say default '$ddef', code says '$def'"
		fi
	fi
	if ! grep -qxF "$key" "$tmp/conf"; then
		problem "$key is missing from etc/mtad.conf"
	fi
done <"$tmp/code"

cut -f1 "$tmp/code" | sort >"$tmp/codekeys"
cut -f1 "$tmp/docs" | sort | uniq -d | while read -r key; do
	echo "check_docs: $key is documented more than once in docs/configuration.md" >&2
	echo x >>"$tmp/dup"
done
[ -e "$tmp/dup" ] && fail=1
for key in $(cut -f1 "$tmp/docs" | sort -u); do
	grep -qxF "$key" "$tmp/codekeys" ||
		problem "docs/configuration.md documents $key, which the code does not know"
done
for key in $(cat "$tmp/conf"); do
	grep -qxF "$key" "$tmp/codekeys" ||
		problem "etc/mtad.conf sets $key, which the code does not know"
done

# ---- planned keys ------------------------------------------------------

# key<TAB>type<TAB>field, from the code
grep -E '^[[:space:]]*KEY\("' "$code" |
	awk -F'"' '{ split($7, a, ","); t = a[2]; f = a[3]
		gsub(/[ \t]/, "", t); gsub(/[ \t]/, "", f)
		printf "%s.%s\t%s\t%s\n", $2, $4, t, f }' >"$tmp/fields"
# keys whose meaning in the key table starts with *planned*
awk '/^## / { in_keys = ($0 ~ /^## Keys[ \t]*$/); next } in_keys' "$docs" |
	awk -F'|' '/^\|[ \t]*`[a-z0-9_]+\.[a-z0-9_]+`/ {
		k = $2; m = $4
		gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/`/, "", k)
		gsub(/^[ \t]+/, "", m)
		if (m ~ /^\*planned\*/) print k
	}' | sort -u >"$tmp/marked"
# the rows of "## Planned keys"
awk '/^## / { in_p = ($0 ~ /^## Planned keys[ \t]*$/); next } in_p' "$docs" |
	grep -oE '^\|[[:space:]]*`[a-z0-9_]+\.[a-z0-9_]+`' |
	tr -d '|` \t' | sort -u >"$tmp/planned"

srcs=$(ls "$root"/libmta/*.c "$root"/mtad/*.c "$root"/spool-tools/*.c \
	2>/dev/null | grep -v '/libmta/config\.c$' || true)
while IFS="$tab" read -r key type field; do
	used=1
	case $type in
	T_LISTEN | T_CIDRS) ;; # read through the parsed arrays
	*)
		# shellcheck disable=SC2086
		grep -qE "(->|\.)$field([^a-z0-9_]|\$)" $srcs || used=0
		;;
	esac
	if [ "$used" -eq 0 ] && ! grep -qxF "$key" "$tmp/marked"; then
		problem "$key is parsed but nothing uses it (field $field): mark it *planned* in docs/configuration.md"
	fi
	if [ "$used" -eq 1 ] && grep -qxF "$key" "$tmp/marked"; then
		problem "$key is marked *planned* in docs/configuration.md but the code uses it (field $field)"
	fi
	if grep -qxF "$key" "$tmp/planned"; then
		problem "$key is listed under \"Planned keys\" but the code knows it: move it to the key table"
	fi
done <"$tmp/fields"
for key in $(cat "$tmp/marked"); do
	grep -qxF "$key" "$tmp/codekeys" ||
		problem "docs/configuration.md marks $key *planned* in the key table, which the code does not know: list it under \"Planned keys\""
done

# DESIGN.md's key table: rows "| `a.b`, `c.d` | meaning | default |"
if [ -r "$design" ]; then
	grep -E '^\|[[:space:]]*`[a-z0-9_]+\.[a-z0-9_]+`' "$design" |
		awk -F'|' '{ print $2 }' |
		grep -oE '`[a-z0-9_]+\.[a-z0-9_]+`' | tr -d '`' |
		sort -u >"$tmp/design"
	for key in $(cat "$tmp/design"); do
		grep -qxF "$key" "$tmp/codekeys" ||
			grep -qxF "$key" "$tmp/planned" ||
			problem "DESIGN.md names $key: neither in the code nor under \"Planned keys\" in docs/configuration.md"
	done
fi

if [ "$fail" -ne 0 ]; then
	exit 1
fi
echo "check_docs: $(wc -l <"$tmp/code") keys documented with their defaults"
np=$(cat "$tmp/marked" "$tmp/planned" | wc -l)
if [ "$np" -gt 0 ]; then
	echo "check_docs: planned (documented, not implemented): $(cat "$tmp/marked" "$tmp/planned" | tr '\n' ' ')"
fi
