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
set -eu

root=${1:-.}
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

if [ "$fail" -ne 0 ]; then
	exit 1
fi
echo "check_docs: $(wc -l <"$tmp/code") keys documented with their defaults"
